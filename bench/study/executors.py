"""Executors: where the study runner's stages run. In this process, one at a time (`InProcess`), or as Ray tasks
on a local Ray instance or a cluster (`RayStages`, `--executor ray`).

An executor takes `submit`ted stages, has `running` of them at once (and takes no more while `full`), and hands
each back from `next_finished` when it is done. Whichever ran a stage, the study's own process keeps the ledger and
the results tables, so the same fingerprints decide what is done and a study moves freely between executors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from bench.study.cluster import RETRIES, connect, has_gpus, result
from bench.context import Context
from bench.work import Work


class Executor(Protocol):
    @property
    def running(self) -> int: ...

    @property
    def full(self) -> bool: ...

    def submit(self, stage: Work, fingerprint: str, run: Callable[[Work, Context], Any]) -> None: ...

    def next_finished(self) -> Finished: ...


@dataclass(frozen=True)
class Finished:
    """A stage an executor ran: what its `run` returned, or the error it raised."""

    stage: Work
    fingerprint: str
    value: Any = None
    seconds: float = 0.0
    error: Exception | None = None


class InProcess:
    """The local executor: each stage runs in this process, one at a time, in the order they are submitted."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pending: tuple[Work, str, Callable[[Work, Context], Any]] | None = None

    @property
    def running(self) -> int:
        return int(self.pending is not None)

    @property
    def full(self) -> bool:
        return self.pending is not None

    def submit(self, stage: Work, fingerprint: str, run: Callable[[Work, Context], Any]) -> None:
        self.pending = (stage, fingerprint, run)

    def next_finished(self) -> Finished:
        (stage, print_, run), self.pending = self.pending, None
        started = time.monotonic()
        try:
            value = run(stage, self.ctx)
        except Exception as exc:
            return Finished(stage, print_, error=exc)
        return Finished(stage, print_, value, time.monotonic() - started)


class RayStages:
    """The executor of `bench reproduce --executor ray`.

    Every stage takes as many CPUs, and runs torch and BLAS on as many threads, as torch uses in this process:
    their sums, so trained weights and SVM scores, depend on the thread count, and this way a stage gives the
    bytes a local run on this machine gives. Training and extraction also take a GPU where the cluster has them.
    """

    full = False  # Ray itself queues the tasks that do not fit yet

    def __init__(self, ctx: Context, address: str | None = None):
        import torch

        self.ray = connect(address)
        self.ctx = ctx
        self.task = self.ray.remote(max_retries=RETRIES)(_run_stage)
        biggest = max(node["Resources"].get("CPU", 0) for node in self.ray.nodes() if node["Alive"])
        self.threads = max(1, min(torch.get_num_threads(), int(biggest)))
        self.gpus = has_gpus(self.ray)
        self.inflight: dict[Any, tuple[Work, str]] = {}

    @property
    def running(self) -> int:
        return len(self.inflight)

    def submit(self, stage: Work, fingerprint: str, run: Callable[[Work, Context], Any]) -> None:
        gpus = int(self.gpus and stage.runs_network)
        ref = self.task.options(num_cpus=self.threads, num_gpus=gpus).remote(run, stage, self.ctx, self.threads)
        self.inflight[ref] = (stage, fingerprint)

    def next_finished(self) -> Finished:
        [ref], _ = self.ray.wait(list(self.inflight), num_returns=1)
        stage, fingerprint = self.inflight.pop(ref)
        try:
            value, seconds = result(self.ray, ref)
        except Exception as exc:
            return Finished(stage, fingerprint, error=exc)
        return Finished(stage, fingerprint, value, seconds)


def _run_stage(run: Callable[[Work, Context], Any], stage: Work, ctx: Context, threads: int) -> tuple[Any, float]:
    """In a Ray worker: one stage, with the study's context and thread count."""
    from threadpoolctl import threadpool_limits

    if stage.runs_network:
        import torch

        torch.set_num_threads(threads)
    started = time.monotonic()
    with threadpool_limits(threads):  # Ray's default: 1 BLAS thread
        value = run(stage, ctx)
    return value, time.monotonic() - started
