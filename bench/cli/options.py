"""The options several commands share, defined once so they mean the same everywhere, and their parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bench import paths
from bench.errors import BenchError

# a str, not a Path: Path("s3://bucket/x") is s3:/bucket/x
StoreOption = Annotated[Optional[str], typer.Option(
    "--store", help="Feature store: a folder or any fsspec URL zarr opens, e.g. s3://bucket/store (default "
                    "$BENCH_STORE, else ./bench-store).")]
RootOption = Annotated[Optional[Path], typer.Option("--root", help="Folder holding the dataset's files.")]
DatasetOptions = Annotated[list[str], typer.Option("--option", "-o", help="Adapter option key=value (repeatable).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts).")]
ExecutorOption = Annotated[Literal["local", "ray"], typer.Option(
    help="local: this process; ray: Ray tasks on a cluster (needs `pip install 'bench\\[ray]'`).")]
AddressOption = Annotated[Optional[str], typer.Option(
    help="With --executor ray: the cluster (e.g. head:6379 or ray://head:10001); default $RAY_ADDRESS, else a "
         "Ray instance started on this machine.")]


def store_url(store: str | None) -> str:
    """The store `--store` names, or the default one."""
    return store or paths.default_store()


def parse_pairs(pairs: list[str], option: str = "--option", what: str = "key=value") -> dict[str, str]:
    """`key=value` strings (repeated options) as a dict; one error naming every malformed one."""
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0].strip()]
    if bad:
        raise BenchError(f"{option} takes {what}, got {bad}")
    return {key.strip(): value for key, value in (p.split("=", 1) for p in pairs)}
# the choices, listed here so that `--help` shows them and a typo fails as the command line is read, without
# importing the modules that define them (tests/test_imports.py checks both lists agree)
DesignName = Literal["mal-vs-ben", "mela-vs-ben", "mela-vs-carc-vs-ben"]  # protocols.designs.DESIGNS
SplitName = Literal["5x2", "official", "reference"]  # protocols.splits.SPLITS
TTAName = Literal["dihedral"]  # bench.extract.tta.VIEWS

TTAOption = Annotated[Optional[TTAName], typer.Option(
    "--tta", help="Test-time augmentation: `dihedral` stores each image's mean feature over its 8 flips/rotations "
                  "(a set of its own, key frozen-tta-dihedral or ft-...-tta-dihedral).")]
