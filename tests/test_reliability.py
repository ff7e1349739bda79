"""The bad-input catalogue of issue 14, walked as a user would, on small generated data: nothing lost, nothing stale,
no tracebacks. Each failure must be one line on stderr, exit code 2, naming the path and the fix; the cases that
already held (corrupt images, resumable extraction) are here too, so they keep holding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import tiny_extraction as tiny
from bench import paths, plugins
from bench.cli import app, main
from bench.dataset import DatasetAdapter, attach_paths
from bench.extract.export import export_onnx
from bench.hookspecs import hookimpl
from featurestore import FeatureStore

runner = CliRunner()
PROGRESS = re.compile(r".+: \d+/\d+ \w+ \(\d+%\), ")  # bench.progress's line off a terminal
DATASET = "labelled-images"
N = 40  # 20 melanomas, 20 nevi: enough for 5x2 stratified folds


def load(root: Path) -> pd.DataFrame:
    """`labels.csv` (image_id, diagnosis) beside `<image_id>.png` files: labels can change without the images."""
    table = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    table.attrs["source"] = str(root / "labels.csv")
    return attach_paths(table, root, DATASET)


class Labelled:
    @staticmethod
    @hookimpl
    def bench_register_datasets(register) -> None:
        register(DatasetAdapter(DATASET, "test images with a labels file", load))


@pytest.fixture(autouse=True)
def plugin():
    tiny.register()
    plugins.plugin_manager().register(Labelled, name="test-reliability")
    yield
    plugins.plugin_manager().unregister(name="test-reliability")
    tiny.unregister()


@pytest.fixture(scope="module")
def _onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(autouse=True)
def shared_onnx_cache(bench_home, _onnx_cache):
    """One ONNX cache for the module (keyed by content): exporting anew in every test costs seconds."""
    (bench_home / "onnx").symlink_to(_onnx_cache, target_is_directory=True)


@pytest.fixture
def data(tmp_path) -> Path:
    root = tiny.write_images(tmp_path / "data", N)
    labels = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(N)],
                           "diagnosis": ["melanoma" if i % 2 else "nevus" for i in range(N)]})
    labels.to_csv(root / "labels.csv", index=False)
    for image in root.glob("*.png"):  # files as old as a real dataset's, so a later edit has a later mtime
        os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    return root


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def bench(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def fails(capsys, *args) -> str:
    """Run `bench ARGS` as the console script does; the one error line it prints (exit code 2, no traceback)."""
    return fails_after(capsys, *args)[0]


def fails_after(capsys, *args) -> tuple[str, str]:
    """`fails`, and what the command printed on stdout before it failed."""
    capsys.readouterr()
    sys.argv = ["bench", *map(str, args)]
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, out + err
    assert "Traceback" not in out + err
    # a log says how far it got, and notes say what the user should know about the data
    lines = [line for line in err.strip().splitlines() if not PROGRESS.match(line) and not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0], out


def extract(data: Path, store: Path, *more) -> str:
    return bench("extract", "--backbone", tiny.NAME, "--dataset", DATASET, "--root", data, "--store", store, *more)


def evaluate(data: Path, store: Path, tmp_path: Path, *more) -> list:
    return ["evaluate", "--protocol", "mela-vs-ben", "--dataset", DATASET, "--backbone", tiny.NAME, "--root", data,
            "--store", store, "--results", tmp_path / "results.csv", *more]


def uncompressed(image: Path) -> Path:
    """The PNG stored without compression (and old), so that other pixels keep its size in bytes exactly."""
    Image.open(image).save(image, compress_level=0)
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    return image


def rewrite_same_size(image: Path) -> None:
    """Other pixels, the same size in bytes: an in-place edit the old size-based fingerprint missed."""
    before = image.stat().st_size
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image, compress_level=0)
    assert image.stat().st_size == before


# --- one writer per feature set -------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import tiny_extraction as tiny
tiny.register()
from bench.context import Context
from bench.extract.pipeline import prepare
from bench.work import DatasetRef, Extract
job = prepare(Extract(tiny.NAME, DatasetRef.of(tiny.DATASET, Path(sys.argv[2]))), Context.for_user(sys.argv[3]))  # takes the lease
Path(sys.argv[4]).write_text("holding")
while not Path(sys.argv[5]).exists():
    time.sleep(0.05)
job.run()
"""


@pytest.mark.slow  # two interpreters that import torch
def test_a_second_writer_is_refused_and_the_first_ones_set_stays_correct(tmp_path, store):
    full, subset = tiny.write_images(tmp_path / "full", 24), tiny.write_images(tmp_path / "subset", 8, seed=1)
    export_onnx(tiny.backbone())  # both processes find the model in the cache
    holding, go = tmp_path / "holding", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(Path(__file__).parent), str(full), str(store),
                              str(holding), str(go)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not holding.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()
            time.sleep(0.05)
        script = ("import sys; sys.path.insert(0, sys.argv[1]); import tiny_extraction as tiny; tiny.register()\n"
                  "from bench.cli import main; sys.argv = ['bench'] + sys.argv[2:]; main()")
        second = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), "extract", "--backbone",
                                 tiny.NAME, "--dataset", tiny.DATASET, "--root", str(subset), "--store", str(store)],
                                capture_output=True, text=True, timeout=300)
    finally:
        go.write_text("go")
        first.wait(timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"being written by another process (pid {first.pid} on" in second.stderr
    assert first.returncode == 0, first.stderr.read().decode()

    held = FeatureStore(store).read(tiny.DATASET, tiny.NAME, "frozen")
    clean = tmp_path / "clean"
    bench("extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", full, "--store", clean)
    alone = FeatureStore(clean).read(tiny.DATASET, tiny.NAME, "frozen")
    assert held.image_ids.tolist() == alone.image_ids.tolist() and len(held.image_ids) == 24
    assert held.features.tobytes() == alone.features.tobytes()


# --- content fingerprints ------------------------------------------------------------------------------------

def test_an_image_changed_in_place_at_the_same_size_is_refused_by_evaluate_and_refreshed_by_extract(
        data, store, tmp_path, capsys):
    image = uncompressed(data / "img007.png")
    extract(data, store)
    bench(*evaluate(data, store, tmp_path))
    rewrite_same_size(image)

    error = fails(capsys, *evaluate(data, store, tmp_path))
    assert "1 image(s) of labelled-images changed since" in error and "img007" in error
    assert f"bench extract --backbone {tiny.NAME} --dataset {DATASET} --root {data}" in error

    out = extract(data, store)
    assert "1 image(s) changed since" in out and "wrote 40 images" in out  # one chunk: the whole set here
    bench(*evaluate(data, store, tmp_path))


def test_a_label_only_change_keeps_the_features_and_evaluates_with_a_note(data, store, tmp_path):
    extract(data, store)
    labels = pd.read_csv(data / "labels.csv")
    labels.loc[0, "diagnosis"] = "melanoma"
    labels.to_csv(data / "labels.csv", index=False)
    assert "labels changed since the features were extracted" in bench(*evaluate(data, store, tmp_path))
    assert "nothing to do" in extract(data, store)  # and it records today's labels: no note any more
    assert "labels changed" not in bench(*evaluate(data, store, tmp_path))


def test_skipped_images_are_recomputed_once_fixed(data, store, capsys):
    good = (data / "img003.png").read_bytes()
    (data / "img003.png").write_bytes(b"")  # a 0-byte image
    error = fails(capsys, "extract", "--backbone", tiny.NAME, "--dataset", DATASET, "--root", data, "--store", store)
    assert f"cannot decode image {data / 'img003.png'}" in error
    out = extract(data, store, "--skip-bad")
    assert "skipped 1 unreadable image" in out and "wrote 39 images" in out  # what the set holds, not what was read
    assert FeatureStore(store).read(DATASET, tiny.NAME, "frozen").attrs["skipped"] == ["img003"]

    (data / "img003.png").write_bytes(good)
    assert "1 image(s) changed since" in extract(data, store)
    assert FeatureStore(store).read(DATASET, tiny.NAME, "frozen").attrs["skipped"] == []


# --- errors, not tracebacks ----------------------------------------------------------------------------------

def test_a_full_disk_during_extract_is_one_line_and_the_rerun_resumes(data, store, capsys, monkeypatch):
    from bench.extract import pipeline as extraction
    from featurestore import store as featurestore

    monkeypatch.setattr(extraction, "CHUNK_BYTES", 8 * 4 * tiny.FEATURE_DIM)  # 5 chunks of 8 images
    real, writes = featurestore.SetWriter.write_chunk, []

    def fills_up(self, chunk, *args, **kwargs):
        writes.append(chunk)
        if len(writes) == 3:  # the disk fills up while the third chunk is written
            raise featurestore.StoreError(f"cannot write chunk {chunk} of {self.where}: [Errno 28] No space left "
                                          "on device. The 2 finished chunk(s) are kept")
        return real(self, chunk, *args, **kwargs)

    monkeypatch.setattr(featurestore.SetWriter, "write_chunk", fills_up)
    assert "No space left on device" in fails(capsys, "extract", "--backbone", tiny.NAME, "--dataset", DATASET,
                                              "--root", data, "--store", store, "--batch-size", 4)
    assert FeatureStore(store).list()[0].chunks_done == 2
    monkeypatch.setattr(featurestore.SetWriter, "write_chunk", real)
    out = extract(data, store, "--batch-size", 4)
    assert "resuming" in out and "2 of 5 chunks already done" in out and FeatureStore(store).list()[0].complete


def test_an_oserror_anywhere_is_one_line_naming_the_file(capsys, monkeypatch, tmp_path):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr("bench.cli.catalogue.plugins.backbones", full)
    error = fails(capsys, "backbones")
    assert f"No space left on device ({tmp_path / 'x'})" in error and "finished work is kept" in error


@pytest.mark.parametrize("command", [
    ["extract", "--backbone", tiny.NAME, "--dataset", DATASET],
    ["evaluate", "--protocol", "mela-vs-ben", "--dataset", DATASET, "--backbone", tiny.NAME],
    ["compare", tiny.NAME, tiny.NAME, "--protocol", "mela-vs-ben", "--dataset", DATASET],
    ["perf", "evaluate", "--protocol", "mela-vs-ben", "--dataset", DATASET, "--backbone", tiny.NAME],
    ["store", "ls"],
    ["store", "rm", DATASET, tiny.NAME, "frozen"],
])
@pytest.mark.parametrize(("url", "says"), [("s3://bucket/x", "pip install s3fs"), ("gs://bucket/x", "pip install gcsfs"),
                                           ("nosuch://x/y", "Protocol not known")])
def test_every_store_url_reaches_zarr_intact(command, url, says, data, capsys):
    needs_root = ["--root", data] if "--dataset" in command else []
    error = fails(capsys, *command, *needs_root, "--store", url)
    assert f"cannot open the store {url}: " in error and says in error


@pytest.mark.parametrize("content", [b"", b"\x00\x01\xfe\xff" * 8, b"dataset,fold\na,b,c,d\n"])
def test_an_unreadable_results_file_is_refused_before_any_work(content, data, store, tmp_path, capsys):
    (tmp_path / "results.csv").write_bytes(content)
    error = fails(capsys, *evaluate(data, store, tmp_path))
    assert f"{tmp_path / 'results.csv'} is not a readable results table" in error
    assert (tmp_path / "results.csv").read_bytes() == content


def test_unwritable_outputs_are_refused_before_any_work_and_the_table_comes_before_the_files(
        data, store, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    error = fails(capsys, *evaluate(data, store, tmp_path), "--predictions", tmp_path / "file" / "p.csv")
    assert f"cannot write {tmp_path / 'file' / 'p.csv'}" in error and "nothing has been computed yet" in error
    assert not (tmp_path / "results.csv").exists()

    extract(data, store)
    monkeypatch.setattr("pandas.DataFrame.to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    error, out = fails_after(capsys, *evaluate(data, store, tmp_path), "--predictions", tmp_path / "p.csv")
    assert "No space. No table was changed" in error and "mean" in out  # the scores were shown all the same
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "p.csv").exists()


def test_a_study_checks_its_output_folder_before_any_stage(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    error = fails(capsys, "reproduce", "demo", "--out", tmp_path / "file" / "demo")
    assert f"cannot write {tmp_path / 'file' / 'demo' / 'results.csv'}" in error


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_one_line_and_skippable(data, store, capsys, monkeypatch):
    # PIL refuses images over twice its limit: here 2400 pixels, which the 20-47 px test images stay under
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    Image.new("RGB", (60, 60)).save(data / "img005.png")
    error = fails(capsys, "extract", "--backbone", tiny.NAME, "--dataset", DATASET, "--root", data, "--store", store)
    assert f"cannot decode image {data / 'img005.png'}" in error and "decompression bomb" in error
    out = extract(data, store, "--skip-bad")
    assert "skipped" in out and str(data / "img005.png") in out


# --- names are names -----------------------------------------------------------------------------------------

def test_a_study_name_cannot_escape_its_folder(tmp_path, capsys):
    study = tmp_path / "escape.toml"
    study.write_text('recipe = "demo"\n[datasets.skin]\nadapter = "synthetic"\n'
                     '[backbones."../../../../ESCAPED"]\nlike = "efficientnet-lite0"\n'
                     '[[evaluate]]\ndataset = "skin"\nprotocols = ["mela-vs-ben"]\nfrozen = ["../../../../ESCAPED"]\n')
    error = fails(capsys, "reproduce", study, "--out", tmp_path / "out")
    assert "backbone '../../../../ESCAPED' is not a name" in error
    assert not (tmp_path / "out").exists() and not any(tmp_path.parents[3].glob("ESCAPED*"))


def test_a_backbone_fed_larger_images_is_a_name_and_a_path_is_not():
    from featurestore import is_name

    assert is_name("efficientnet-lite1@448") and is_name("tiny-test@64")  # `name@SIZE` sets live beside the others
    assert not any(map(is_name, ["../x", "a/b", "@448", "", ".hidden"]))


def test_a_fold_or_dataset_that_is_a_path_is_refused(data, store, capsys):
    error = fails(capsys, "extract", "--backbone", tiny.NAME, "--dataset", DATASET, "--root", data, "--store", store,
                  "--protocol", "mela-vs-ben", "--fold", "../../x")
    assert "fold '../../x' is not a name" in error


# --- pipes and scripts ---------------------------------------------------------------------------------------

def test_listings_print_whole_names_when_piped_and_parse_as_json(data, store, tmp_path):
    assert "efficientnet-lite0" in bench("backbones") and "efficientnet-lite2" in bench("backbones")
    assert {b["name"] for b in json.loads(bench("backbones", "--json"))} == set(plugins.backbones())
    assert {d["name"] for d in json.loads(bench("datasets", "--json"))} == set(plugins.datasets())
    assert {r["name"] for r in json.loads(bench("recipes", "--json"))} >= {"paper", "cpu", "demo"}
    assert {s["name"] for s in json.loads(bench("studies", "--json"))} >= {"demo", "menegola2017"}
    shown = json.loads(bench("datasets", "show", DATASET, "--root", data, "--json"))
    assert shown["images"] == N and shown["counts"]["diagnosis"] == {"nevus": 20, "melanoma": 20}

    extract(data, store)
    listed = json.loads(bench("store", "ls", "--store", store, "--json"))
    assert [(s["dataset"], s["backbone"], s["key"], s["complete"]) for s in listed] == \
        [(DATASET, tiny.NAME, "frozen", True)]
    assert f"{DATASET} " in bench("store", "ls", "--store", store)  # the whole name, not "labelled-i…"
    summary = json.loads(runner.invoke(app, list(map(str, evaluate(data, store, tmp_path, "--json")))).stdout)
    assert summary[0]["backbone"] == tiny.NAME and 0 <= summary[0]["auc"] <= 1 and summary[0]["folds"] == 10
    compared = json.loads(bench("compare", tiny.NAME, tiny.NAME, "--protocol", "mela-vs-ben", "--dataset", DATASET,
                                "--root", data, "--store", store, "--json"))
    assert compared["auc_difference"] == 0 and compared["folds"] == 10


# --- unclear corners -----------------------------------------------------------------------------------------

def test_store_ls_on_a_missing_store_is_an_error(tmp_path, capsys):
    assert f"no feature store at {tmp_path / 'typo'}" in fails(capsys, "store", "ls", "--store", tmp_path / "typo")


def test_evaluate_with_an_unknown_backbone_says_so(data, store, tmp_path, capsys):
    error = fails(capsys, "evaluate", "--protocol", "mela-vs-ben", "--dataset", DATASET, "--backbone", "nosuch",
                  "--root", data, "--store", store, "--results", tmp_path / "r.csv")
    assert "unknown backbone 'nosuch'" in error and "efficientnet-lite0" in error


@pytest.mark.parametrize(("edit", "says"), [
    (lambda t: t.assign(image_id=t["image_id"].where(t.index != 4, "")), "1 row(s) of {csv} have a blank image id"),
    (lambda t: t.assign(image_id=t["image_id"].where(t.index != 4, "img003")), "duplicated image ids in {csv}"),
])
def test_blank_and_duplicated_ids_name_the_labels_file(edit, says, data, capsys):
    csv = data / "labels.csv"
    edit(pd.read_csv(csv, dtype=str)).to_csv(csv, index=False)
    assert says.format(csv=csv) in fails(capsys, "datasets", "show", DATASET, "--root", data)


def test_datasets_show_decodes_every_image(data, capsys):
    (data / "img010.png").write_bytes((data / "img010.png").read_bytes()[:60])  # truncated
    (data / "img011.png").write_bytes(b"")
    error = fails(capsys, "datasets", "show", DATASET, "--root", data)
    assert "2 of 40 image(s) cannot be decoded" in error
    assert str(data / "img010.png") in error and str(data / "img011.png") in error


# --- concurrent writers of one results table ------------------------------------------------------------------

WRITER = """
import sys
import pandas as pd
from bench.evaluate.results import KEY, PREDICTION_KEY, upsert
results, predictions, writer, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    fold = pd.DataFrame({"dataset": "d", "protocol": "mela-vs-ben", "backbone": "b", "finetuned": False,
                         "split": "5x2", "fold": [f"{writer}-{i}"], "auc": [0.5]})
    upsert((results, fold, KEY), (predictions, fold.assign(image_id="x"), PREDICTION_KEY))
"""


def test_concurrent_writers_of_one_results_pair_lose_no_row_and_agree(tmp_path):
    results, predictions = tmp_path / "results.csv", tmp_path / "predictions.csv"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(results), str(predictions), f"w{w}", "25"])
               for w in range(4)]
    assert [w.wait(timeout=300) for w in writers] == [0] * 4
    expected = {f"w{w}-{i}" for w in range(4) for i in range(25)}
    assert set(pd.read_csv(results)["fold"]) == expected
    assert set(pd.read_csv(predictions)["fold"]) == expected


@pytest.mark.slow  # four interpreters evaluating at once
def test_concurrent_evaluations_of_different_folds_keep_every_row(tmp_path, store):
    options = ["-o", "n=60", "-o", "size=32"]
    bench("extract", "--backbone", tiny.NAME, "--dataset", "synthetic", "--store", store, *options)
    results, predictions = tmp_path / "results.csv", tmp_path / "predictions.csv"
    script = "import sys; from bench.cli import main; sys.argv = ['bench'] + sys.argv[1:]; main()"
    folds = ["r0f0", "r0f1", "r1f0", "r1f1"]
    runs = [subprocess.Popen([sys.executable, "-c", script, "evaluate", "--protocol", "mela-vs-ben", "--dataset",
                              "synthetic", "--backbone", tiny.NAME, "--store", str(store), *options, "--fold", fold,
                              "--results", str(results), "--predictions", str(predictions)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for fold in folds]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()
    assert sorted(pd.read_csv(results)["fold"]) == folds
    assert sorted(pd.read_csv(predictions)["fold"].unique()) == folds


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
from bench.cli import main
sys.argv = ['bench'] + sys.argv[1:]
main()
"""


def test_no_room_for_the_results_is_found_before_the_evaluation(tmp_path, store):
    options = ["-o", "n=60", "-o", "size=32"]
    bench("extract", "--backbone", tiny.NAME, "--dataset", "synthetic", "--store", store, *options)
    run = subprocess.run([sys.executable, "-c", FULL_DISK, "evaluate", "--protocol", "mela-vs-ben", "--dataset",
                          "synthetic", "--backbone", tiny.NAME, "--store", str(store), *options,
                          "--results", str(tmp_path / "results.csv")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"cannot write {tmp_path / 'results.csv'}" in run.stderr and "nothing has been computed yet" in run.stderr
    assert "AUC" not in run.stdout and not (tmp_path / "results.csv").exists()


def test_a_replaced_results_file_keeps_its_mode(data, store, tmp_path):
    extract(data, store)
    bench(*evaluate(data, store, tmp_path, "--fold", "r0f0"))
    (tmp_path / "results.csv").chmod(0o664)  # shared with a group
    bench(*evaluate(data, store, tmp_path, "--fold", "r0f1"))
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o664
    assert sorted(pd.read_csv(tmp_path / "results.csv")["fold"]) == ["r0f0", "r0f1"]


def test_training_sees_images_replaced_at_the_same_size_with_their_mtime_set_back(data, tmp_path):
    import torch

    from bench.train import loop
    from bench.backbone import read_checkpoint
    from bench.context import Context, Registry
    from bench.train.jobs import finetune_job
    from bench.train.recipes import get_recipe
    from bench.work import DatasetRef, FineTune

    for image in data.glob("*.png"):
        uncompressed(image)
    recipe = get_recipe("demo").with_overrides(image_size=32, batch_size=8, epochs=1)
    backbone = tiny.backbone()
    ctx = Context(paths.home(), str(tmp_path / "store"), Registry({backbone.name: backbone}))
    job = finetune_job(FineTune(backbone.name, DatasetRef.of(DATASET, data), "mela-vs-ben", "5x2", "r0f0", recipe), ctx)
    loop.fit(job)
    before = read_checkpoint(job.out)["state_dict"]
    for path in map(Path, job.data.paths):
        stat = path.stat()
        rewrite_same_size(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    loop.fit(job)
    after = read_checkpoint(job.out)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained on the new pixels, not the cache


# --- images of any mode: their real range, or refused --------------------------------------------------------

def test_a_16_bit_png_gets_the_features_of_its_8_bit_original(data, store):
    grey = np.asarray(Image.open(data / "img007.png").convert("L"))
    Image.fromarray(grey).save(data / "img007.png")
    extract(data, store)
    original = FeatureStore(store).read(DATASET, tiny.NAME, "frozen").features[7]
    Image.fromarray(grey.astype(np.uint16) * 257).save(data / "img007.png")  # the same picture at 16 bits
    assert Image.open(data / "img007.png").mode == "I;16"
    assert "1 image(s) changed since" in extract(data, store)
    np.testing.assert_allclose(FeatureStore(store).read(DATASET, tiny.NAME, "frozen").features[7], original,
                               atol=1e-6)


RGB = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
GREY = RGB[..., 1]


@pytest.mark.parametrize(("image", "original"), [
    (Image.fromarray(GREY.astype(np.uint16) * 257), GREY),
    (Image.fromarray(GREY.astype(np.float32) / 255), GREY),
    (Image.fromarray(RGB).convert("RGBA"), RGB),  # opaque
    (Image.fromarray(GREY).convert("LA"), GREY),
    (Image.fromarray(GREY).convert("P"), GREY),
    (Image.fromarray(RGB).convert("CMYK"), RGB),
], ids=["I;16", "F", "RGBA", "LA", "P", "CMYK"])
def test_every_mode_decodes_to_the_pixels_of_its_8_bit_original(image, original, tmp_path):
    from bench.images import load_image

    path = tmp_path / f"image.{'tiff' if image.mode in ('F', 'CMYK') else 'png'}"
    image.save(path)
    Image.fromarray(original).save(tmp_path / "original.png")
    assert Image.open(path).mode == image.mode
    assert np.array_equal(load_image(path, 24), load_image(tmp_path / "original.png", 24))


@pytest.mark.parametrize("pixels", [np.full((8, 8), 70_000, np.int32), np.full((8, 8), 300.0, np.float32),
                                    np.full((8, 8), np.nan, np.float32)])
def test_pixels_of_unknown_range_are_refused_naming_the_file(pixels, tmp_path):
    from bench.errors import BenchError
    from bench.images import load_image

    Image.fromarray(pixels).save(tmp_path / "odd.tiff")
    with pytest.raises(BenchError, match=f"cannot decode image {tmp_path / 'odd.tiff'}: its pixels"):
        load_image(tmp_path / "odd.tiff", 8)


def test_transparent_pixels_are_laid_on_black(tmp_path):
    from bench.images import load_image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[:4, ..., 3], rgba[4:, ..., 3] = 200, 255, 0
    Image.fromarray(rgba).save(tmp_path / "half.png")
    decoded = load_image(tmp_path / "half.png", 8)
    assert (decoded[:3] == 200).all() and (decoded[5:] == 0).all()


# --- damaged chunks ------------------------------------------------------------------------------------------

def _chunk_file(store: Path, chunk: int) -> Path:
    return store / DATASET / tiny.NAME / "frozen" / "features" / "c" / str(chunk) / "0"


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove"])
def test_a_damaged_chunk_is_named_by_evaluate_and_exactly_it_is_recomputed_by_extract(
        damage, data, store, tmp_path, capsys, monkeypatch):
    from bench.extract import pipeline as extraction

    monkeypatch.setattr(extraction, "CHUNK_BYTES", 8 * 4 * tiny.FEATURE_DIM)  # 5 chunks of 8 images
    extract(data, store, "--batch-size", 4)
    before = FeatureStore(store).read(DATASET, tiny.NAME, "frozen").features
    chunk = _chunk_file(store, 2)
    stored = bytearray(chunk.read_bytes())
    if damage == "truncate":
        chunk.write_bytes(stored[: len(stored) // 2])
    elif damage == "flip":
        stored[len(stored) // 2] ^= 0x10
        chunk.write_bytes(stored)
    else:
        chunk.unlink()

    error = fails(capsys, *evaluate(data, store, tmp_path))
    assert f"feature set {DATASET}/{tiny.NAME}/frozen in {store} is damaged: chunk(s) 2 (rows 16-23)" in error
    assert f"bench extract --backbone {tiny.NAME} --dataset {DATASET}" in error
    error, out = fails_after(capsys, "store", "verify", "--store", store)
    assert f"{DATASET}/{tiny.NAME}/frozen: damaged chunk(s) [2]" in out and "1 set(s) in" in error

    loaded = []
    real = extraction.load_batch
    monkeypatch.setattr(extraction, "load_batch", lambda chunk, *a: loaded.append(chunk) or real(chunk, *a))
    assert "1 damaged chunk(s)" in extract(data, store, "--batch-size", 4)
    assert set(loaded) == {2}  # exactly the damaged chunk
    assert FeatureStore(store).read(DATASET, tiny.NAME, "frozen").features.tobytes() == before.tobytes()
    assert f"{DATASET}/{tiny.NAME}/frozen: ok" in bench("store", "verify", "--store", store)
    bench(*evaluate(data, store, tmp_path))


def test_a_store_made_before_checksums_still_reads_and_its_truncated_chunks_are_found(
        data, store, tmp_path, capsys, monkeypatch):
    from featurestore import store as featurestore

    with monkeypatch.context() as patched:  # not monkeypatch.undo(): that would undo the test's BENCH_HOME too
        patched.setattr(featurestore, "CHECKSUMMED", "auto")  # zarr's default codecs, as stores were made before
        extract(data, store)
    assert "crc32c" not in (store / DATASET / tiny.NAME / "frozen" / "features" / "zarr.json").read_text()
    bench(*evaluate(data, store, tmp_path))
    chunk = _chunk_file(store, 0)
    chunk.write_bytes(chunk.read_bytes()[:100])
    assert "is damaged: chunk(s) 0 (rows 0-39)" in fails(capsys, *evaluate(data, store, tmp_path))
    assert "1 damaged chunk(s)" in extract(data, store)
    bench(*evaluate(data, store, tmp_path))


# --- progress in logs ----------------------------------------------------------------------------------------

def test_progress_off_a_terminal_is_a_plain_line_per_interval_and_per_tenth(capsys):
    from bench.progress import progress

    with progress("decoding", 1000, interval=0.05) as shown:
        for _ in range(3):
            time.sleep(0.06)
            shown.advance(2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("decoding: 6/1000 images (1%), ")
    assert " images/s, " in lines[-1] and lines[-1].endswith(" left")

    with progress("training", 50, unit="batches", interval=3600) as shown:
        for step in range(50):
            shown.advance(1, status=f"loss {step}")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == [f"{n}/50" for n in range(5, 51, 5)]
    assert lines[-1].startswith("training: 50/50 batches (100%)") and lines[-1].endswith("; loss 49")


def test_extract_into_a_log_says_where_it_stands(data, store, monkeypatch):
    from bench import progress

    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    out = extract(data, store, "--batch-size", 8)
    lines = [line for line in out.splitlines() if line.startswith(f"{DATASET}/{tiny.NAME}")]
    assert lines[0].startswith(f"{DATASET}/{tiny.NAME}/frozen: 8/40 images (20%), ") and "images/s" in lines[0]
    assert lines[-1].startswith(f"{DATASET}/{tiny.NAME}/frozen: 40/40 images (100%)")


# --- low items -------------------------------------------------------------------------------------------------

def test_a_header_only_labels_file_is_named(data, tmp_path, capsys):
    (data / "labels.csv").write_text("image_id,diagnosis\n")
    assert f"{data / 'labels.csv'} lists no images" in fails(capsys, "datasets", "show", DATASET, "--root", data)
    (tmp_path / "ham").mkdir()
    (tmp_path / "ham" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n")
    error = fails(capsys, "datasets", "show", "ham10000", "--root", tmp_path / "ham")
    assert f"{tmp_path / 'ham' / 'HAM10000_metadata.csv'} has a header but no rows" in error


@pytest.mark.parametrize("url", ["file://{tmp}/new/store", "memory://issue-23-store"])
def test_a_store_url_can_create_the_store(url, data, tmp_path):
    url = url.format(tmp=tmp_path)
    extract(data, url)
    assert len(FeatureStore(url).read(DATASET, tiny.NAME, "frozen").image_ids) == N
    assert "nothing to do" in extract(data, url)


def test_a_complete_set_on_a_read_only_store_is_left_alone(data, store, monkeypatch):
    from featurestore import StoreError

    extract(data, store)
    real = FeatureStore._open

    def read_only(self, mode):
        if mode != "r":
            raise StoreError(f"cannot open the store {self.path}: [Errno 30] Read-only file system")
        return real(self, mode)

    monkeypatch.setattr(FeatureStore, "_open", read_only)
    assert "is already complete (40 images): nothing to do" in extract(data, store)
