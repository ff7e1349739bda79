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
WeightsOption = Annotated[Optional[Path], typer.Option(
    "--weights", help="The backbone's weights from this file (safetensors, or a torch state dict such as "
                      "torchvision's vgg16-397923af.pth) instead of its initial ones; their digest is the model's "
                      "identity in the store.")]
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
TTAName = Literal["dihedral"]  # featurestore.keys.TTA_VIEWS

TTAOption = Annotated[Optional[TTAName], typer.Option(
    "--tta", help="Test-time augmentation: `dihedral` stores each image's mean feature over its 8 flips/rotations "
                  "(a set of its own, key frozen-tta-dihedral or ft-...-tta-dihedral).")]

# the options of the commands that score feature sets (evaluate, compare, select, perf evaluate)
Protocol = Annotated[DesignName, typer.Option(help="Label design.")]
Dataset = Annotated[str, typer.Option(help="Dataset adapter (see `bench datasets`).")]
Backbone = Annotated[str, typer.Option(help="Backbone whose features are scored (see `bench backbones`); A+B scores "
                                             "the concatenation of A's and B's L2-normalised sets.")]
ScoredTTA = Annotated[Optional[TTAName], typer.Option("--tta", help="Score the sets extracted with `bench extract --tta`.")]
PowerNorm = Annotated[bool, typer.Option("--power-norm", help="Signed square root of every feature before L2 "
                                                              "normalisation (recorded in the results).")]
Finetuned = Annotated[bool, typer.Option("--finetuned", help="Use each fold's fine-tuned set ft-<protocol>-<fold>.")]
Split = Annotated[SplitName, typer.Option(help="How folds are made.")]
EvaluateSplit = Annotated[Optional[SplitName], typer.Option(
    help="How folds are made (default 5x2; with --train-dataset, default: no folds, all of --dataset is scored).")]
TrainDataset = Annotated[Optional[str], typer.Option(
    help="External evaluation: fit the SVM on all of this dataset (adapter), score --dataset (with --split, each "
         "fold's SVM learns on both this and the fold's training part).")]
TrainRoot = Annotated[Optional[Path], typer.Option(help="Folder holding --train-dataset's files.")]
TrainOptions = Annotated[list[str], typer.Option("--train-option", help="--train-dataset adapter option key=value.")]
DropOverlap = Annotated[bool, typer.Option(
    "--drop-overlap", help="Leave out (and count in each row) scored images that are pictures a source stage or "
                           "the training dataset holds, instead of refusing to score them.")]
ReferenceDir = Annotated[Optional[Path], typer.Option(help="The paper's fold files (a folder or one .yml file).")]
KeepDuplicates = Annotated[bool, typer.Option("--keep-duplicate-folds",
                                              help="Reference split: also run the repeated partitions.")]
Folds = Annotated[list[str], typer.Option(
    "--fold", help="Only this fold (repeatable), e.g. r0f0 where only it was fine-tuned; default: every fold.")]
Seed = Annotated[int, typer.Option(help="Seeds the 5x2 folds, the validation split and the bootstrap.")]
Results = Annotated[Path, typer.Option(help="Results table: one row per fold, replaced by key.")]
Predictions = Annotated[Optional[Path], typer.Option(help="Per-image test scores (CSV, .csv.gz to compress).")]
