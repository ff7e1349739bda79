"""The results table (one row per fold) and the predictions table (one row per fold and test image): read them,
select one evaluation's rows, and add rows, replacing those with the same key.

Every writer goes through here: the paths are checked before any work (so a long evaluation never ends in an
unwritable file or a full disk), both tables change together or not at all under one lock (so evaluations of
other folds running at the same time never drop each other's rows), and a crash mid-write leaves the previous
files.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pandas as pd

from bench.atomic import atomic_paths, locked
from bench.errors import BenchError

# `seed` names the partition (5x2 folds of another seed are other folds with the same names); tables written before
# it was part of the key read as seed 0, the only seed they held
KEY = ["dataset", "protocol", "backbone", "finetuned", "split", "seed", "fold"]
EVALUATION = KEY[:-1]  # all folds of one evaluation: one leaderboard row
PREDICTION_KEY = KEY + ["image_id"]
SPARE_BYTES = 1 << 20  # room a rewrite needs beyond the table's present size, made sure of before any work


def read_table(path: Path) -> pd.DataFrame:
    """A results or predictions CSV; a missing or unreadable file is one BenchError naming it."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path} not found: run `bench evaluate` first (it writes it), or pass its path")
    try:
        table = pd.read_csv(path, dtype={"fold": str, "image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise _unreadable(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if not isinstance(table.index, pd.RangeIndex):  # pandas turns the extra leading fields of long rows into an index
        raise _unreadable(path, "some rows have more fields than the header")
    table = with_seed(table)
    keys = [k for k in PREDICTION_KEY if k in table]
    short = table.index[table[keys].isna().any(axis=1)]
    if len(short):
        raise _unreadable(path, f"{len(short)} row(s) lack key fields, e.g. line {short[0] + 2}")
    if "finetuned" in table:
        table["finetuned"] = table["finetuned"].astype(str).str.lower() == "true"
    return table


def with_seed(table: pd.DataFrame) -> pd.DataFrame:
    """Rows from before the seed was part of the key are seed 0's (an unrelated CSV is left for the caller to
    refuse)."""
    if "dataset" not in table:
        return table
    return table.assign(seed=table["seed"].fillna(0).astype(int) if "seed" in table else 0)


def read_tables(*paths: Path) -> list[pd.DataFrame]:
    """Several tables as they stood at one moment (under their writers' lock), e.g. results and predictions that
    agree with each other."""
    with locked(*paths):
        return [read_table(path) for path in paths]


def _unreadable(path: Path, why: str) -> BenchError:
    return BenchError(f"{path} is not a readable results table ({why}): pass another path, or move it away and run "
                      "`bench evaluate` again")


def matching(table: pd.DataFrame, **identity: object) -> pd.DataFrame:
    """The rows whose columns equal `identity` (any of EVALUATION's columns, e.g. dataset=..., finetuned=True)."""
    unknown = sorted(set(identity) - set(KEY))
    if unknown:
        raise ValueError(f"select by {unknown}: rows are identified by {KEY}")
    keep = pd.Series(True, index=table.index)
    for column, value in identity.items():
        keep &= table[column] == value
    return table[keep]


def check_writable(*paths: Path | None) -> None:
    """Before the work: every path can be written and, where it exists, is a table bench can add rows to, and its
    disk has room to write it again."""
    for path in (Path(p) for p in paths if p is not None):
        size = 0
        if path.exists():
            read_table(path)
            size = path.stat().st_size
        folder = next((p for p in path.parents if p.exists()), Path.cwd())
        try:
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
            _probe(folder, size + SPARE_BYTES)  # the honest test: permissions, ACLs, read-only mounts, free space
        except OSError as exc:
            raise BenchError(f"cannot write {path}: {folder} is not writable ({exc.strerror or exc}). Pass a path "
                             "you can write to, or free space (nothing has been computed yet)") from None


def _probe(folder: Path, size: int) -> None:
    """Write and sync `size` bytes in `folder` (and remove them): a full disk or quota fails here."""
    with tempfile.TemporaryFile(dir=folder) as probe:
        block = bytes(min(size, 1 << 20))
        for _ in range(0, size, len(block)):
            probe.write(block)
        probe.flush()
        os.fsync(probe.fileno())


def upsert(*updates: tuple[Path, pd.DataFrame, list[str]]) -> list[pd.DataFrame]:
    """Add each `(path, rows, key)`'s rows to the CSV at path, replacing earlier rows with the same key. All files
    are read, merged and replaced together under their lock, or none is (results and their predictions never
    disagree, and a concurrent writer's rows are never lost)."""
    paths = [Path(path) for path, _, _ in updates]
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)  # a folder to lock in
        with locked(*paths):
            tables = [_merged(path, rows, key) for path, (_, rows, key) in zip(paths, updates)]
            with atomic_paths(*paths) as tmps:
                for table, tmp, path in zip(tables, tmps, paths):
                    table.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    except OSError as exc:
        raise BenchError(f"cannot write {', '.join(map(str, paths))}: {exc.strerror or exc}. No table was changed: "
                         "free space or fix the permissions and run again") from None
    return tables


def _merged(path: Path, rows: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    rows = with_seed(rows)
    if not path.is_file():
        return rows
    old = read_table(path)
    missing = [k for k in key if k not in old.columns]
    if missing:
        raise BenchError(f"{path} lacks column(s) {missing}: it is not a bench results/predictions file; "
                         "pass another path")
    stale = old.set_index(key).index.isin(rows.set_index(key).index)
    return pd.concat([old[~stale], rows], ignore_index=True)
