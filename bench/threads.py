"""How many threads bench's pools use: the CPUs this process may run on (affinity and cgroup quota), never more.

A pool sized to every core of the machine, when the process may use fewer, or when another job shares them,
oversubscribes the CPUs: workers wait on one another and spin while they wait, and a job that should take twice as
long under a second job takes ten times as long. So torch, BLAS, OpenMP, onnxruntime and the decode pools all take
their size from `count()`, and waiting workers sleep instead of spinning. `BENCH_THREADS` (or `bench --threads N`)
overrides the count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.errors import BenchError

ENV = "BENCH_THREADS"
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cpus, quota)) if quota else cpus


def cgroup_quota() -> int | None:
    """The cgroup's CPU limit rounded up to whole CPUs, or None where there is none (v2 `cpu.max`, v1 CFS)."""
    try:
        if CGROUP_V2.is_file():
            quota, period = CGROUP_V2.read_text().split()[:2]
        else:
            quota = CGROUP_V1.read_text().strip()
            period = CGROUP_V1.with_name("cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def count() -> int:
    """Threads per pool: `BENCH_THREADS` where set, else `available_cpus()`."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return available_cpus()
    if not value.isdigit() or int(value) < 1:
        raise BenchError(f"{ENV}={value!r} must be a whole number of threads, at least 1 (or unset it)")
    return int(value)


def before_loading() -> None:
    """Make idle OpenMP workers sleep instead of spinning; only effective before torch is imported (GNU OpenMP
    reads its environment once, as it loads). Under a second job, spinning workers take the time slices their
    peers wait for: a training step measured 30x slower with them than without."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure(threads: int | None = None) -> int:
    """Size every pool of this process to `threads` (default `count()`).

    Environment variables reach the libraries not loaded yet and child processes; threadpoolctl and torch's own
    setter resize the ones already loaded."""
    if threads is not None:
        if threads < 1:
            raise BenchError("--threads must be at least 1")
        os.environ[ENV] = str(threads)
    n = count()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(n)
    before_loading()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # not used as a context manager: the limit stays for the life of the process
    return n
