"""Writes that happen whole or not at all: each file is written beside its target under a temporary name and
renamed over it, so an interruption (Ctrl-C, a kill, a full disk) leaves the previous file, never a torn one.
Files that are read, merged and written back by several processes take turns under `locked`."""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from bench.errors import BenchError

LOCK_TIMEOUT = 3600.0  # seconds: a writer waits this long for another to finish before giving up


@contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Temporary paths to write `targets` to; all are renamed over their targets when the block ends without an
    error, none when it raises (so files that must agree, like results and predictions, change together). A
    replaced file keeps its permission bits (a shared, group-writable table stays so)."""
    targets = tuple(Path(t) for t in targets)
    tmps = [t.with_name(f".{t.name}.{os.getpid()}-{threading.get_ident()}.tmp") for t in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        yield tmps
        for tmp, target in zip(tmps, targets):
            if target.exists():
                shutil.copymode(target, tmp)
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """One temporary path, renamed over `target` when the block succeeds."""
    with atomic_paths(target) as (tmp,):
        yield tmp


@contextmanager
def locked(*targets: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold every target's lock (a `.NAME.lock` file beside it, released by the OS if the holder dies) for a
    read-merge-replace: without it two processes each write back what they read before the other's rows. The
    locks are taken in one order, so two writers of overlapping sets of files never wait on each other forever.
    A target in a folder that is missing or not writable has no lock: no writer can replace it there."""
    with ExitStack() as held:
        for target in sorted({Path(t).absolute() for t in targets}):
            if not os.access(target.parent, os.W_OK):
                continue
            lock = target.with_name(f".{target.name}.lock")
            try:
                held.enter_context(FileLock(lock, timeout=timeout))
            except Timeout:
                raise BenchError(f"{target} has been locked by another bench process for {timeout:.0f} s ({lock}): "
                                 "wait for it to finish, or remove the lock file if no bench process runs") from None
        yield


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
