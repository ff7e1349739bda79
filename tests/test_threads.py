"""Thread pools sized from the CPUs this process may use, with one override."""

from __future__ import annotations

import os

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from bench import threads
from bench.errors import BenchError


@pytest.mark.parametrize(("cpu_max", "quota"), [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1)])
def test_a_cgroup_quota_is_read_in_whole_cpus(tmp_path, monkeypatch, cpu_max, quota):
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(threads, "CGROUP_V2", tmp_path / "cpu.max")
    assert threads.cgroup_quota() == quota
    assert threads.available_cpus() == min(len(os.sched_getaffinity(0)), quota or 10**6)


def test_the_pools_take_the_override_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.count() == threads.available_cpus()
    for name in (threads.ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores them after the test
    torch_before, blas_before = torch.get_num_threads(), threadpool_limits(limits=None)
    try:
        assert threads.configure(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        torch.set_num_threads(torch_before)
        blas_before.restore_original_limits()
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(BenchError, match="BENCH_THREADS='two' must be a whole number"):
        threads.count()
