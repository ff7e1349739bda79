"""Content hashes of files (images, weights, models), cached by path, size and modification times so unchanged
files are read once: the one way bench tells whether a file it used before is the same file.

Features, decoded pixels, models and results must follow the content, not the file names: a file replaced in
place (even at the same byte size, its mtime set back) has to be noticed. Hashing every file on every run would read the whole dataset each time, so each
digest is kept in an SQLite file under `$BENCH_HOME` (safe for several processes at once) and reused while the
file's size, mtime and ctime are unchanged; any write to a file changes its ctime, which no tool can set back.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import numpy as np

from bench import paths
from bench.errors import BenchError

BLOCK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of one file's content."""
    return str(file_digests([path])[0])


def file_digests(files: list[str | os.PathLike]) -> np.ndarray:
    """sha256 (hex) of each file's content, in order."""
    files = [os.path.abspath(path) for path in files]
    stats = [_stat(path) for path in files]
    try:
        with closing(open_cache()) as db:
            cached = {path: (stat, sha) for path, stat, sha in lookup(db, "SELECT path, stat, sha256 FROM digests "
                                                                           "WHERE path IN ({})", files)}
            todo = [i for i, (path, stat) in enumerate(zip(files, stats)) if cached.get(path, ("",))[0] != stat]
            fresh = _hash([files[i] for i in todo])
            with db:
                db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)",
                               [(files[i], stats[i], digest) for i, digest in zip(todo, fresh)])
    except sqlite3.Error:  # a read-only or full $BENCH_HOME costs speed, never the answer
        return np.array(_hash(files), dtype=str)
    cached.update((files[i], (stats[i], digest)) for i, digest in zip(todo, fresh))
    return np.array([cached[path][1] for path in files], dtype=str)


def _hash(files: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # hashlib releases the GIL
        return list(pool.map(file_sha256, files))


def _stat(path: str) -> str:
    try:
        s = os.stat(path)
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}. Restore the file (an image: or remove it from the "
                         "dataset's labels)") from None
    return f"{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's content, read now (`file_digests` reuses earlier reads)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while block := file.read(BLOCK):
                digest.update(block)
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}. Restore the file or fix its permissions") from None
    return digest.hexdigest()


def open_cache() -> sqlite3.Connection:
    """The cache file under `$BENCH_HOME`: digests by path, and what others key by digest (`bench.overlap`)."""
    folder = paths.home()
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "image-digests.sqlite", timeout=60)
    db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT, sha256 TEXT)")
    return db


def lookup(db: sqlite3.Connection, query: str, keys: list[str]):
    """The rows of `query` (ending `IN ({})`) for the keys the cache knows, a few hundred keys per query (SQLite
    caps the parameters of one statement)."""
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        yield from db.execute(query.format(",".join("?" * len(part))), part)
