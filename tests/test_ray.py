"""`--executor ray` on a local Ray instance (2 CPUs, this machine only): extraction shards write the bytes a local
run writes, a worker killed mid-shard is replaced without a trace in the store, and a study run as Ray tasks gives
the results and report of a local run."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

import tiny_extraction as tiny
from bench.extract import pipeline as extract
from bench.study.reproduce import reproduce
from bench.study.runner import ran_stages
from bench.study.schema import load_study
from bench.cli import app
from bench.errors import BenchError

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'bench[ray]'")
pytestmark = pytest.mark.slow  # every test here shares a local Ray instance, which takes seconds to start

runner = CliRunner()
BATCH = 4
SET = Path(tiny.DATASET) / tiny.NAME / "frozen"
KILL = "BENCH_TEST_KILL_ARMED"  # a file: while it exists, the next worker to reach chunk 1's second batch dies


def _set_up_worker() -> None:
    """Ray worker set-up hook: the test backbone registered as in this process, and a worker that loads the second
    batch of chunk 1 while the armed file exists removes it and exits on the spot, as a killed process or a lost
    node would, after the chunk's first batch is computed."""
    tiny.register()
    load = extract.load_batch

    def load_batch(chunk, rows, files, preprocessing):
        armed = Path(os.environ[KILL])
        if chunk == 1 and rows[0] > 0 and armed.exists():
            armed.unlink()
            os._exit(1)
        return load(chunk, rows, files, preprocessing)

    extract.load_batch = load_batch


@pytest.fixture(scope="module", autouse=True)
def kill_armed(tmp_path_factory) -> Path:
    """One local Ray instance for the module; the path that arms the worker kill (see `_set_up_worker`)."""
    scratch = tmp_path_factory.mktemp("ray")
    tests = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, object_store_memory=128 << 20,
             runtime_env={"worker_process_setup_hook": _set_up_worker,
                          # TMPDIR: the workers' copies of the model land in the test's scratch folder
                          "env_vars": {"PYTHONPATH": tests, "TMPDIR": str(scratch), KILL: str(scratch / "armed")}})
    yield scratch / "armed"
    ray.shutdown()


@pytest.fixture(scope="module")
def _onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(autouse=True)
def plugin(monkeypatch, bench_home, _onnx_cache):
    (bench_home / "onnx").symlink_to(_onnx_cache, target_is_directory=True)  # export the test model once
    tiny.register()
    monkeypatch.setattr(extract, "CHUNK_BYTES", 8 * 4 * tiny.FEATURE_DIM)  # 8-row chunks: 3 shards of 22 images
    yield
    tiny.unregister()


@pytest.fixture
def images(tmp_path) -> Path:
    return tiny.write_images(tmp_path / "images", 22)


def run_extract(images: Path, store: Path, *more: str, ok: bool = True):
    args = ["extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", images, "--store", store,
            "--batch-size", BATCH, *more]
    result = runner.invoke(app, [str(a) for a in args], terminal_width=200)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def stored(store: Path) -> tuple[dict[str, bytes], dict]:
    """Every file of the feature set, byte for byte, and its metadata less the creation time and id."""
    root = store / SET
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    meta = json.loads(files.pop("zarr.json"))
    del meta["attributes"]["created"], meta["attributes"]["creation_id"]
    return files, meta


def test_a_ray_extraction_writes_the_bytes_of_a_local_one(images, tmp_path):
    run_extract(images, tmp_path / "local")
    out = run_extract(images, tmp_path / "ray", "--executor", "ray")
    assert f"wrote 22 images to {tiny.DATASET}/{tiny.NAME}/frozen" in out.output

    files, meta = stored(tmp_path / "ray")
    assert [f for f in files if f.startswith("done/c/")] == ["done/c/0", "done/c/1", "done/c/2"]
    assert (files, meta) == stored(tmp_path / "local")


def test_a_worker_killed_mid_shard_is_replaced_and_the_store_is_complete(images, tmp_path, kill_armed):
    run_extract(images, tmp_path / "local")
    kill_armed.touch()
    run_extract(images, tmp_path / "ray", "--executor", "ray")
    assert not kill_armed.exists(), "no worker died: the test did not test a lost worker"
    assert stored(tmp_path / "ray") == stored(tmp_path / "local")


def test_a_bad_image_in_a_shard_fails_with_its_path_or_is_skipped(images, tmp_path):
    bad = images / "img017.png"  # in the third chunk
    bad.write_bytes(b"not a png")
    out = run_extract(images, tmp_path / "ray", "--executor", "ray", ok=False)
    assert type(out.exception) is BenchError and str(bad) in str(out.exception)  # not Ray's wrapped traceback

    out = run_extract(images, tmp_path / "ray", "--executor", "ray", "--skip-bad")
    assert "skipped 1 unreadable image" in out.output and str(bad) in out.output
    run_extract(images, tmp_path / "local", "--skip-bad")
    assert stored(tmp_path / "ray") == stored(tmp_path / "local")


def test_without_ray_the_option_says_how_to_install_it(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on a machine without the extra
    out = run_extract(images, tmp_path / "store", "--executor", "ray", ok=False)
    assert type(out.exception) is BenchError and "pip install 'bench[ray]'" in str(out.exception)
    assert not (tmp_path / "store").exists()  # said before any work


def test_an_address_where_no_cluster_answers_fails_at_once_with_the_fix(images, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    out = run_extract(images, tmp_path / "store", "--executor", "ray", "--address", "127.0.0.1:1", ok=False)
    assert type(out.exception) is BenchError and "ray start --head" in str(out.exception)
    assert not (tmp_path / "store").exists()


def test_perf_extract_on_ray_measures_each_worker_count(images):
    args = ["perf", "extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", str(images),
            "--limit", "16", "--batch-size", "4", "--executor", "ray", "--workers", "2", "--repeat", "1", "--json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    figures = json.loads(out.stdout)
    assert (figures["images"], figures["shards"]) == (16, 4)  # 2 x 2 workers shards of whole batches
    assert all(figures[k] > 0 for k in ("local_ips", "ray_cold_ips", "ray_1_workers_ips", "ray_2_workers_ips"))


STUDY = f"""
description = "a study of the tiny test backbone, every kind of stage"
recipe = "demo"
seed = 0
overrides = {{ epochs = 1, image_size = 32, batch_size = 8 }}

[datasets.skin]
adapter = "synthetic"
options = {{ n = 80, size = 48 }}

[datasets.fundus]
adapter = "synthetic-fundus"
options = {{ n = 40, size = 32 }}

[backbones.tiny-double]
like = "{tiny.NAME}"
source = "fundus"

[transfer]
imagenet = "{tiny.NAME}"
double = "tiny-double"

[[evaluate]]
dataset = "skin"
split = "official"
protocols = ["mela-vs-ben"]
frozen = ["{tiny.NAME}", "tiny-double"]
finetuned = ["{tiny.NAME}"]
"""


def test_a_study_on_ray_gives_the_results_of_a_local_run_and_either_resumes_the_other(tmp_path):
    (tmp_path / "tiny.toml").write_text(STUDY)
    study = load_study(tmp_path / "tiny.toml")
    quiet = Console(file=io.StringIO(), width=120)
    assert reproduce(study, tmp_path / "local", quiet)["ran"] == 9
    assert reproduce(study, tmp_path / "ray", quiet, executor="ray")["ran"] == 9

    local, on_ray = (json.loads((tmp_path / out / "ledger.json").read_text())["stages"] for out in ("local", "ray"))
    for key in local:  # trained weights (through the models they export) and every metric are the same bytes
        if key.startswith(("extract", "evaluate")):
            assert local[key]["digest"] == on_ray[key]["digest"], key
    tables = [pd.read_csv(tmp_path / out / "results.csv").drop(columns=["command", "created"])  # store, time
              .sort_values(["backbone", "finetuned"], ignore_index=True) for out in ("local", "ray")]
    pd.testing.assert_frame_equal(*tables, check_exact=True)  # bootstrap intervals too: the same SVM scores
    reports = [(tmp_path / out / "report.md").read_text().replace(str(tmp_path / out), "OUT") for out in ("local", "ray")]
    assert reports[0] == reports[1]

    assert reproduce(study, tmp_path / "ray", quiet)["skipped"] == 9  # a Ray run's stages count as done locally
    assert ran_stages(tmp_path / "ray" / "log.jsonl")[-1] == []
