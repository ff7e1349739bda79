"""`bench extract`, `bench store` and `bench perf extract` end to end on tiny images with a tiny registered backbone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

import tiny_extraction as tiny
from bench import paths
from bench.extract import pipeline as extract
from bench.backbone import Preprocessing, save_checkpoint
from bench.cli import app
from bench.dataset import label_fingerprint
from bench.errors import BenchError
from bench.extract.export import export_onnx
from bench.images import load_image
from featurestore import FeatureStore, StoreError

runner = CliRunner()
BATCH = 4


@pytest.fixture(autouse=True)
def plugin():
    tiny.register()
    yield
    tiny.unregister()


@pytest.fixture(scope="module")
def _onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(autouse=True)
def shared_onnx_cache(bench_home, _onnx_cache, monkeypatch):
    """One ONNX cache for the module: it is keyed by content, and exporting anew in every test costs seconds."""
    (bench_home / "onnx").symlink_to(_onnx_cache, target_is_directory=True)


@pytest.fixture
def images(tmp_path) -> Path:
    return tiny.write_images(tmp_path / "images", 22)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def small_chunks(monkeypatch):
    """8-row chunks (real chunks are ~4 MiB: a single chunk for any test dataset)."""
    monkeypatch.setattr(extract, "CHUNK_BYTES", 8 * 4 * tiny.FEATURE_DIM)


def bench(*args: str, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args], terminal_width=200)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def run_extract(images: Path, store: Path, *more, ok: bool = True):
    return bench("extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", images, "--store", store,
                 "--batch-size", BATCH, *more, ok=ok)


def read(store: Path, key: str = "frozen"):
    return FeatureStore(store).read(tiny.DATASET, tiny.NAME, key)


def expected_features(paths_: list[str], weights: Path | None = None, size: int = tiny.SIZE) -> np.ndarray:
    """What the torch network gives for these files, decoded the same way."""
    backbone = tiny.backbone()
    images = Preprocessing(size=size).normalise(np.stack([load_image(p, size) for p in paths_]))
    with torch.no_grad():
        return backbone.create(weights)(torch.from_numpy(images)).numpy()


def test_extract_stores_every_image_with_its_provenance(images, store, small_chunks):
    out = run_extract(images, store)
    assert f"wrote 22 images to {tiny.DATASET}/{tiny.NAME}/frozen" in out.output

    features = read(store)
    manifest = tiny.load(images)
    assert features.image_ids.tolist() == manifest["image_id"].tolist()
    np.testing.assert_allclose(features.features, expected_features(manifest["path"].tolist()), atol=1e-5)
    attrs = features.attrs
    assert attrs["model_sha256"] == export_onnx(tiny.backbone()).sha256
    assert attrs["labels_fingerprint"] == label_fingerprint(manifest) and attrs["preprocessing"]["size"] == tiny.SIZE
    assert attrs["bench_version"] and attrs["created"] and attrs["weights"] == "initial weights"
    assert zarr.open_group(store, mode="r")[f"{tiny.DATASET}/{tiny.NAME}/frozen/features"].chunks == (8, 16)


def test_a_finished_extraction_reruns_as_a_no_op(images, store, monkeypatch):
    run_extract(images, store, "--limit", 10)
    monkeypatch.setattr(Preprocessing, "load", lambda *a: pytest.fail("decoded an image again"))
    out = run_extract(images, store, "--limit", 10)
    assert "already complete (10 images): nothing to do" in out.output


@pytest.mark.slow
def test_a_killed_extraction_resumes_to_the_same_bytes(tmp_path, images, store, monkeypatch):
    monkeypatch.setattr(extract, "CHUNK_BYTES", 8 * 4 * tiny.FEATURE_DIM)
    export_onnx(tiny.backbone())  # the subprocess finds the model in the cache
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import tiny_extraction as tiny; tiny.register()\n"
        "from bench.extract import pipeline as extract; from bench.backbone import Preprocessing\n"
        "from bench.cli import main\n"
        f"extract.CHUNK_BYTES = {extract.CHUNK_BYTES}; real = Preprocessing.load\n"
        "Preprocessing.load = lambda self, p: time.sleep(0.2) or real(self, p)  # slow enough to be killed mid-way\n"
        "sys.argv = ['bench'] + sys.argv[2:]; main()\n"
    )
    command = [sys.executable, "-c", script, str(Path(__file__).parent), "extract", "--backbone", tiny.NAME,
               "--dataset", tiny.DATASET, "--root", str(images), "--store", str(store), "--batch-size", str(BATCH)]
    process = subprocess.Popen(command, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_a_finished_chunk(store, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = FeatureStore(store).list()[0]
    assert 1 <= killed.chunks_done < killed.chunks == 3
    first_chunk = (store / tiny.DATASET / tiny.NAME / "frozen" / "features" / "c" / "0" / "0").read_bytes()

    job = tiny.extract(tiny.NAME, tiny.DATASET, images, store, batch_size=BATCH)
    assert len(job.todo) == killed.chunks - killed.chunks_done  # only the missing chunks ran
    assert (store / tiny.DATASET / tiny.NAME / "frozen" / "features" / "c" / "0" / "0").read_bytes() == first_chunk

    tiny.extract(tiny.NAME, tiny.DATASET, images, tmp_path / "uninterrupted", batch_size=BATCH)
    resumed, uninterrupted = read(store), read(tmp_path / "uninterrupted")
    assert resumed.features.tobytes() == uninterrupted.features.tobytes()
    assert resumed.image_ids.tolist() == uninterrupted.image_ids.tolist()


def wait_for_a_finished_chunk(store: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        infos = FeatureStore(store).list() if (store / "zarr.json").exists() else []
        if infos and infos[0].chunks_done:
            return
        time.sleep(0.05)
    raise AssertionError(f"no chunk finished (exit code {process.poll()}): {process.stderr.read().decode()}")


def test_other_weights_or_preprocessing_never_reuse_stored_features(images, store, monkeypatch):
    run_extract(images, store)
    monkeypatch.setattr(tiny, "SEED", 1)
    out = run_extract(images, store, ok=False)
    assert isinstance(out.exception, StoreError) and "another model" in str(out.exception)
    assert f"bench store rm {tiny.DATASET} {tiny.NAME} frozen" in str(out.exception)

    monkeypatch.setattr(tiny, "SEED", 0)
    monkeypatch.setattr(tiny, "SIZE", 40)
    out = run_extract(images, store, ok=False)
    assert isinstance(out.exception, StoreError) and "other preprocessing (size 32 stored, 40 now)" in str(out.exception)

    run_extract(images, store, "--overwrite")
    assert read(store).attrs["preprocessing"]["size"] == 40


def test_a_fine_tuned_fold_uses_its_checkpoint_and_its_key(images, store):
    out = run_extract(images, store, "--protocol", "mal-vs-ben", "--fold", "r0f1", ok=False)
    assert isinstance(out.exception, BenchError) and "no fine-tuned checkpoint" in str(out.exception)

    net = tiny.backbone().create()
    with torch.no_grad():
        net[3].weight.mul_(-1)
    checkpoint = paths.finetuned_checkpoint(paths.home(), tiny.DATASET, tiny.NAME, "mal-vs-ben", "r0f1")
    save_checkpoint(checkpoint, net, tiny.NAME, Preprocessing(size=24))
    run_extract(images, store, "--protocol", "mal-vs-ben", "--fold", "r0f1")

    features = read(store, "ft-mal-vs-ben-r0f1")
    assert features.attrs["weights"] == str(checkpoint) and features.attrs["preprocessing"]["size"] == 24
    paths_ = tiny.load(images)["path"].tolist()
    np.testing.assert_allclose(features.features, expected_features(paths_, checkpoint, size=24), atol=1e-5)


def test_a_fine_tuned_extraction_reads_its_checkpoint_once(images, store, monkeypatch):
    net = tiny.backbone().create()
    with torch.no_grad():
        net[3].weight.mul_(3)  # weights no other test exports: the memo and the model cache both miss
    checkpoint = paths.finetuned_checkpoint(paths.home(), tiny.DATASET, tiny.NAME, "mela-vs-ben", "r1f0")
    save_checkpoint(checkpoint, net, tiny.NAME, Preprocessing(size=32), fold_record={"fold": "r1f0"})
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(Path(path)) or load(path, *a, **k))
    models = set(paths.onnx_dir(paths.home()).glob("*.onnx"))

    run_extract(images, store, "--protocol", "mela-vs-ben", "--fold", "r1f0")
    assert set(paths.onnx_dir(paths.home()).glob("*.onnx")) - models  # exported: the path with the most reads
    assert reads == [checkpoint]  # preprocessing, weights and fold record from one read
    assert read(store, "ft-mela-vs-ben-r1f0").attrs["fold_record"] == {"fold": "r1f0"}


def test_a_corrupt_image_fails_with_its_path_and_keeps_finished_chunks(images, store, small_chunks):
    bad = images / "img017.png"  # in the third chunk (rows 16-21)
    bad.write_bytes(b"not a png")
    out = run_extract(images, store, ok=False)
    assert isinstance(out.exception, BenchError) and str(bad) in str(out.exception)
    info = FeatureStore(store).list()[0]
    assert (info.chunks_done, info.chunks) == (2, 3)

    out = run_extract(images, store, "--skip-bad")
    assert "resuming" in out.output and "skipped 1 unreadable image" in out.output and str(bad) in out.output
    features = read(store)
    assert "img017" not in features.image_ids and len(features.image_ids) == 21
    assert features.attrs["skipped"] == ["img017"] and np.isfinite(features.features).all()
    stored = zarr.open_group(store, mode="r")[f"{tiny.DATASET}/{tiny.NAME}/frozen/features"]
    assert np.isnan(stored[17]).all()  # the stored row is marked, never a zero vector


def test_store_ls_and_rm(images, store):
    run_extract(images, store, "--limit", 5)
    out = bench("store", "ls", "--store", store)
    model = export_onnx(tiny.backbone())
    row = next(line for line in out.output.splitlines() if tiny.NAME in line)
    assert tiny.DATASET in row and "frozen" in row and " 5 " in row and " 16 " in row and "yes" in row
    assert model.sha256[:12] in row

    bench("store", "rm", tiny.DATASET, tiny.NAME, "frozen", "--store", store)
    assert "holds no feature sets" in bench("store", "ls", "--store", store).output
    out = bench("store", "rm", tiny.DATASET, tiny.NAME, "frozen", "--store", store, ok=False)
    assert isinstance(out.exception, StoreError)


def test_perf_extract_reports_the_three_rates_as_json(images):
    out = bench("perf", "extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", images,
                "--limit", 12, "--repeat", 2, "--json", "--tta", "dihedral")
    figures = json.loads(out.output)
    assert figures["images"] == 12
    assert figures["tta_per_view_vs_pipeline"] == pytest.approx(figures["tta_views_ps"] / figures["pipeline_ips"],
                                                                rel=0.05, abs=0.002)
    for key in ("naive_ips", "ceiling_ips", "pipeline_ips", "peak_rss_mb"):
        assert figures[key] > 0
    ratios = {"pipeline_vs_naive": "naive_ips", "pipeline_vs_ceiling": "ceiling_ips"}
    for ratio, base in ratios.items():  # figures are rounded to 0.1 images/s, ratios to 3 decimals
        assert figures[ratio] == pytest.approx(figures["pipeline_ips"] / figures[base], rel=0.05, abs=0.002)


@pytest.mark.slow
def test_efficientnet_lite0_on_ham10000(shared_data, store):
    root = shared_data / "ham10000"
    job = tiny.extract("efficientnet-lite0", "ham10000", root, store, limit=64)
    features = FeatureStore(store).read("ham10000", "efficientnet-lite0", "frozen")
    assert features.features.shape == (64, 1280) and np.isfinite(features.features).all()
    assert features.image_ids.tolist() == job.manifest["image_id"].tolist()
    assert features.features.std(axis=0).mean() > 0  # the images give different features


def test_tta_features_are_the_mean_over_the_eight_flips_and_rotations(images, store, small_chunks):
    run_extract(images, store, "--tta", "dihedral")
    tta = read(store, "frozen-tta-dihedral")
    assert tta.attrs["tta"] == "dihedral" and tta.attrs["key"] == "frozen-tta-dihedral"
    with pytest.raises(StoreError):  # the plain set is another set, never filled by a TTA run
        read(store)

    paths_ = tiny.load(images)["path"].tolist()
    decoded = np.stack([load_image(p, tiny.SIZE) for p in paths_])
    turned = [np.rot90(decoded, k, axes=(1, 2)) for k in range(4)]
    views = [v for t in turned for v in (t, t[:, :, ::-1])]  # the 8 symmetries of the square, as images
    backbone = tiny.backbone()
    with torch.no_grad():
        expected = np.mean([backbone.create()(torch.from_numpy(backbone.preprocessing.normalise(
            np.ascontiguousarray(v)))).numpy() for v in views], axis=0)
    np.testing.assert_allclose(tta.features, expected, atol=1e-5)
    assert not np.allclose(tta.features, expected_features(paths_), atol=1e-3)  # the views did change something


def test_an_unknown_tta_is_refused_as_the_command_line_is_read(images, store):
    out = run_extract(images, store, "--tta", "flips", ok=False)
    assert out.exit_code == 2 and "dihedral" in out.output and not (store / tiny.DATASET).exists()
