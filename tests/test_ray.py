"""`--executor ray` on a local Ray instance (2 CPUs, this machine only): extraction shards write the bytes a local
run writes, and a worker killed mid-shard is replaced without a trace in the store."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tiny_extraction as tiny
from bench import extract
from bench.cli import app
from bench.cli.app import console
from bench.errors import BenchError

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'bench[ray]'")

runner = CliRunner()
BATCH = 4
SET = Path(tiny.DATASET) / tiny.NAME / "frozen"
KILL = "BENCH_TEST_KILL_ARMED"  # a file: while it exists, the next worker to reach chunk 1's second batch dies


def _die_once_mid_chunk() -> None:
    """Ray worker set-up hook: makes the worker that loads the second batch of chunk 1 remove the armed file and
    exit on the spot, as a killed process or a lost node would, after the chunk's first batch is computed."""
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
    """One local Ray instance for the module; the path that arms `_die_once_mid_chunk`."""
    scratch = tmp_path_factory.mktemp("ray")
    tests = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, object_store_memory=128 << 20,
             runtime_env={"worker_process_setup_hook": _die_once_mid_chunk,
                          # TMPDIR: the workers' copies of the model land in the test's scratch folder
                          "env_vars": {"PYTHONPATH": tests, "TMPDIR": str(scratch), KILL: str(scratch / "armed")}})
    yield scratch / "armed"
    ray.shutdown()


@pytest.fixture(autouse=True)
def plugin(monkeypatch):
    tiny.register()
    monkeypatch.setattr(console, "width", 200)  # messages on one line each
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
    """Every file of the feature set, byte for byte, and its metadata less the creation time."""
    root = store / SET
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    meta = json.loads(files.pop("zarr.json"))
    del meta["attributes"]["created"]
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


def test_perf_extract_on_ray_measures_each_worker_count(images):
    args = ["perf", "extract", "--backbone", tiny.NAME, "--dataset", tiny.DATASET, "--root", str(images),
            "--limit", "16", "--batch-size", "4", "--executor", "ray", "--workers", "2", "--json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    figures = json.loads(out.stdout)
    assert (figures["images"], figures["shards"]) == (16, 4)  # 2 x 2 workers shards of whole batches
    assert all(figures[k] > 0 for k in ("local_ips", "ray_cold_ips", "ray_1_workers_ips", "ray_2_workers_ips"))
