"""Writes that happen whole or not at all: each file is written beside its target under a temporary name and
renamed over it, so an interruption (Ctrl-C, a kill, a full disk) leaves the previous file, never a torn one."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Temporary paths to write `targets` to; all are renamed over their targets when the block ends without an
    error, none when it raises (so files that must agree, like results and predictions, change together)."""
    targets = tuple(Path(t) for t in targets)
    tmps = [t.with_name(f".{t.name}.{os.getpid()}-{threading.get_ident()}.tmp") for t in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        yield tmps
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """One temporary path, renamed over `target` when the block succeeds."""
    with atomic_paths(target) as (tmp,):
        yield tmp


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
