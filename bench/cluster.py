"""`--executor ray`: bench's work as Ray tasks, on a local Ray instance or an existing cluster.

Extraction is cut into shards of one store chunk each. Every shard is a task that opens its own onnxruntime
session, decodes its images and writes its chunk whole, then marks it done, exactly as a local run does; no two
tasks share a chunk, so concurrent writers never lose data (zarr does when two write one chunk). A task whose
worker dies is run again by Ray (`max_retries`), so the store ends complete and identical to a local run, and an
interrupted run leaves finished chunks that the next run, local or on Ray, does not redo.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchError
from bench.export import ExportedModel
from bench.extract import Extraction

INSTALL = "pip install 'bench[ray]'"
RETRIES = 3  # attempts after a lost worker (a killed process, a lost node) before the run fails


def connect(address: str | None = None) -> Any:
    """The `ray` module, connected to the cluster at `address` (e.g. `ray://head:10001`, `head:6379`, `auto`),
    else to $RAY_ADDRESS, else to a Ray instance started on this machine for the run."""
    try:
        import ray
    except ImportError:
        raise BenchError(f"--executor ray needs Ray, an optional extra: {INSTALL}") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
        except ConnectionError as exc:
            raise BenchError(f"no Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}; start one with "
                             "`ray start --head` and pass the address it prints to --address") from None
    return ray


def task_resources(ray: Any) -> dict[str, float]:
    """What one extraction or training task asks for: a GPU where the cluster has them, else a CPU."""
    return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def extract_on_ray(job: Extraction, advance: Callable[[int], None] = lambda n: None, *, workers: int | None = None,
                   address: str | None = None) -> None:
    """Compute `job`'s missing chunks as Ray tasks, at most `workers` at a time (default: as many as the cluster
    runs); `advance(k)` after each chunk of k images. Fills `job.skipped` in manifest order, as `job.run` does."""
    ray = connect(address)
    shard = ray.remote(max_retries=RETRIES)(_extract_chunk).options(**task_resources(ray))
    model = [ray.put(job.model.path.read_bytes())]  # in a list: Ray leaves it a reference, fetched only if needed
    base = ray.put(dataclasses.replace(job, todo=[], skipped=[]))
    queue, running, skipped = list(job.todo), {}, {}
    try:
        while queue or running:
            while queue and len(running) < (workers or len(job.todo)):
                chunk = queue.pop(0)
                running[shard.remote(base, chunk, model)] = chunk
            [ready], _ = ray.wait(list(running), num_returns=1)
            chunk = running.pop(ready)
            skipped[chunk] = _result(ray, ready)
            advance(len(job.writer.chunk_rows_of(chunk)))
    finally:
        for ref in running:  # after a failure or Ctrl-C; finished chunks are kept for the next run
            ray.cancel(ref)
    job.skipped += [path for chunk in sorted(skipped) for path in skipped[chunk]]


def _result(ray: Any, ref: Any) -> Any:
    """The task's value; a bench error raised in the task is raised here as itself, without Ray's traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, BenchError):
            raise exc.cause from None
        raise


def _extract_chunk(job: Extraction, chunk: int, model: list) -> list[str]:
    """In a Ray worker: compute and store one chunk of `job`; the paths of the unreadable images it left out."""
    import ray

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    job = dataclasses.replace(job, model=_local_model(job.model, model[0]), todo=[chunk], skipped=[], threads=cpus)
    job.run()
    return job.skipped


def _local_model(model: ExportedModel, data: Any) -> ExportedModel:
    """The model as a file on this worker's machine (the driver's ONNX cache may be on another), written once per
    machine: the file is named by its content hash."""
    import ray

    path = Path(tempfile.gettempdir()) / "bench-onnx" / f"{model.sha256}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(ray.get(data))
        partial.replace(path)  # atomic: a concurrent task never reads half a model
    return dataclasses.replace(model, path=path)
