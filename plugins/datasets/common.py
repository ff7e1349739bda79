"""What the built-in adapters share: option checking (typed by each `load`'s signature), CSV reading and label
mapping that fail with one clear error, and the cache folder for the images bench writes itself (synthetic sets,
DermaMNIST)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from bench import paths
from bench.dataset import DIAGNOSES, few
from bench.errors import BenchError

MANIFEST_FILE = "manifest.csv"


def checked_options(name: str) -> Callable[[Callable[..., pd.DataFrame]], Callable[..., pd.DataFrame]]:
    """Check `--option key=value` (a string) against `load`'s signature: an unknown key, or a value that is not of
    its parameter's type (`bool`, or `int` with bounds such as `Annotated[int, Ge(20)]`), is one BenchError naming
    the option and what it must be; `load` gets the values converted to those types."""

    def decorate(load: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
        known = [p for p in inspect.signature(load).parameters if p != "root"]

        @functools.wraps(load)
        def wrapper(root: Path | None, **options: str) -> pd.DataFrame:
            unknown = sorted(set(options) - set(known))
            if unknown:
                raise BenchError(f"{name}: unknown option(s) {unknown}; it takes: {', '.join(known) or 'none'}")
            return load(root, **typed_options(name, load, options))

        return wrapper

    return decorate


def typed_options(name: str, load: Callable[..., pd.DataFrame], options: dict[str, str]) -> dict[str, object]:
    """The options converted to the types of `load`'s parameters, checked by pydantic (imported only here: listing
    the adapters does not pay for it)."""
    from pydantic import ValidationError

    from bench.validation import first, message

    try:
        return dict(_options_model(load).model_validate(options))
    except ValidationError as exc:
        error = first(exc)
        key = error["loc"][0]
        raise BenchError(f"{name}: option {key}={options.get(key)} {message(error)}") from None


@functools.cache
def _options_model(load: Callable[..., pd.DataFrame]) -> type:
    """A pydantic model whose fields are `load`'s parameters after `root`, with their types and defaults."""
    from pydantic import create_model

    hints = typing.get_type_hints(load, include_extras=True)
    fields = {p.name: (hints.get(p.name, str), p.default)
              for p in inspect.signature(load).parameters.values() if p.name != "root"}
    return create_model(f"{load.__module__}.options", **fields)


def optional_path(value: str | Path | None) -> Path | None:
    return Path(value) if value else None


def read_csv(path: Path, columns: list[str], dataset: str, **read_options: object) -> pd.DataFrame:
    """The CSV as strings, or one error saying why it is unreadable or which columns it lacks."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, **read_options)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{dataset}: cannot read {path}: {exc}. Check that it is the CSV the dataset ships") from exc
    table.columns = [str(c).strip() for c in table.columns]
    table.attrs["source"] = str(path)  # named by the manifest checks (blank or duplicated ids)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BenchError(f"{dataset}: {path} lacks column(s) {missing}; it has {list(table.columns)}")
    if table.empty:
        raise BenchError(f"{dataset}: {path} has a header but no rows. Check that it is the CSV the dataset ships")
    return table[columns].apply(lambda column: column.str.strip())


def map_labels(labels: pd.Series, table: Mapping[str, str], dataset: str, where: Path | str,
               ids: pd.Series) -> pd.Series:
    """Map source labels (case-insensitively) onto the vocabulary; one error naming every row with an unknown one."""
    mapped = labels.str.lower().map(table)
    bad = mapped.isna()
    if bad.any():
        rows = [f"{i} {v!r}" for i, v in zip(ids[bad], labels[bad])]
        raise BenchError(f"{dataset}: {len(rows)} row(s) of {where} have an unknown label: {few(rows)}; "
                         f"known labels: {', '.join(sorted(table))}")
    return mapped


def in_vocabulary(table: Mapping[str, str]) -> Mapping[str, str]:
    """A label table whose targets are checked against DIAGNOSES once, at import, so a typo cannot ship."""
    wrong = sorted(set(table.values()) - set(DIAGNOSES))
    assert not wrong, f"label table maps onto unknown diagnoses {wrong}"
    return table


def finish(manifest: pd.DataFrame) -> pd.DataFrame:
    """Deterministic row order (by image id) whatever the order of the source files."""
    return manifest.sort_values("image_id", kind="stable").reset_index(drop=True)


def generated(name: str, params: Mapping[str, object], write: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """The manifest of a folder of images bench makes itself, written once under datasets_dir() and reused.

    `write(folder)` draws the images into `folder` and returns their manifest with paths relative to it. The
    folder name carries a hash of `params`, and it is filled in a temporary folder and renamed into place, so an
    interrupted run never leaves a half-written set that would be reused.
    """
    digest = hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:12]
    folder = paths.datasets_dir(paths.home()) / f"{name}-{digest}"
    if not (folder / MANIFEST_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write(scratch).to_csv(scratch / MANIFEST_FILE, index=False)
            (scratch / "params.json").write_text(json.dumps(dict(params), sort_keys=True, indent=1))
            if folder.exists():  # left without its manifest by hand: not ours to trust
                shutil.rmtree(folder)
            os.rename(scratch, folder)
        except OSError as exc:
            if not (folder / MANIFEST_FILE).is_file():  # another process finishing first is fine
                raise BenchError(f"cannot write the {name} images under {folder.parent}: {exc}. Free some space "
                                 "or point BENCH_HOME at a writable folder") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    manifest = pd.read_csv(folder / MANIFEST_FILE, dtype={"image_id": str, "lesion_id": str})
    return manifest.assign(path=[str(folder / p) for p in manifest["path"]])
