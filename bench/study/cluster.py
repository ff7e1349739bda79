"""`--executor ray`: bench's work as Ray tasks, on a local Ray instance or an existing cluster.

A study (`bench reproduce`) runs each stage as a task: see `bench.study.executors.RayStages`.

Extraction (`bench extract`) is cut into shards of one store chunk each. Every shard is a task that opens its own
onnxruntime session, decodes its images and writes its chunk whole, then marks it done, exactly as a local run
does; no two tasks share a chunk, so concurrent writers never lose data (zarr does when two write one chunk).

A task whose worker dies (a killed process, a lost node) is run again by Ray (`max_retries`): a study stage starts
over, an extraction shard rewrites its whole chunk, so the results end complete and identical to a local run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench import atomic
from bench.errors import BenchError
from featurestore.errors import StoreError
from protocols.errors import ProtocolError

if TYPE_CHECKING:
    from bench.extract.model_cache import ExportedModel
    from bench.extract.pipeline import Extraction

INSTALL = "pip install 'bench[ray]'"
RETRIES = 3  # runs of a task after the first whose worker died, before the run fails


def connect(address: str | None = None) -> Any:
    """The `ray` module, connected to the cluster at `address` (e.g. `ray://head:10001`, `head:6379`, `auto`),
    else to $RAY_ADDRESS, else to a Ray instance started on this machine for the run."""
    try:
        import ray
    except ImportError:
        raise BenchError(f"--executor ray needs Ray, an optional extra: {INSTALL}") from None
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        fix = "start one with `ray start --head` and pass the address it prints (HOST:6379) to --address"
        if target and target not in ("auto", "local") and not _listening(target):
            raise BenchError(f"no Ray cluster answers at {target}: {fix}")  # Ray itself retries for minutes
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
        except ConnectionError as exc:
            raise BenchError(f"no Ray cluster at {target}: {exc}; {fix}") from None
    return ray


def _listening(address: str) -> bool:
    """Whether something accepts connections at `address` (HOST:PORT or ray://HOST:PORT)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError):
        return False
    return True


def has_gpus(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1


def result(ray: Any, ref: Any) -> Any:
    """The task's value; a bench error raised in the task is raised here as itself, without Ray's traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (BenchError, StoreError, ProtocolError)):
            raise exc.cause from None
        raise


# --- extraction shards -----------------------------------------------------------------------------------------

def extract_on_ray(job: Extraction, advance: Callable[[int], None] = lambda n: None, *, workers: int | None = None,
                   address: str | None = None) -> None:
    """Compute `job`'s missing chunks as Ray tasks, at most `workers` at a time (default: as many as the cluster
    runs); `advance(k)` after each chunk of k images. Fills `job.skipped` in manifest order, as `job.run` does."""
    ray = connect(address)
    shard = ray.remote(max_retries=RETRIES)(_extract_chunk).options(num_gpus=int(has_gpus(ray)))
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
            skipped[chunk] = result(ray, ready)
            advance(len(job.writer.chunk_rows_of(chunk)))
    finally:
        for ref in running:  # after a failure or Ctrl-C; finished chunks are kept for the next run
            ray.cancel(ref)
    job.skipped += [path for chunk in sorted(skipped) for path in skipped[chunk]]


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
        atomic.write_bytes(path, ray.get(data))  # a concurrent task never reads half a model
    return dataclasses.replace(model, path=path)
