"""Where bench keeps what it makes, so every stage finds the others' outputs."""

import os
from pathlib import Path

from bench.errors import BenchError
from featurestore.keys import NAME_RULE, PREFIXED_RULE, feature_key, is_backbone_name, is_name, path_part


def home() -> Path:
    """The user's root for weights, trained models, ONNX files, generated datasets and caches (`$BENCH_HOME`, else
    ~/.cache/bench). Read, never set, by bench: a study passes its own folder as its units' home instead."""
    return Path(os.environ.get("BENCH_HOME") or Path.home() / ".cache" / "bench")


def weights_dir(home: Path) -> Path:
    """Initial weights of backbones: imported ImageNet files and trained source stages (e.g. `retino.pt`)."""
    return home / "weights"


def models_dir(home: Path) -> Path:
    """Fine-tuned checkpoints: `models/{dataset}/{backbone}/ft-{protocol}-{fold}.pt`."""
    return home / "models"


def onnx_dir(home: Path) -> Path:
    """Exported ONNX models, cached by content hash."""
    return home / "onnx"


def datasets_dir(home: Path) -> Path:
    """Datasets bench generates or downloads itself (synthetic, DermaMNIST)."""
    return home / "datasets"


def default_store() -> str:
    """The zarr feature store used when `--store` is not given: a folder or an fsspec URL (a str, because a Path
    would turn `s3://bucket` into `s3:/bucket`)."""
    return os.environ.get("BENCH_STORE") or "bench-store"


DEFAULT_RESULTS = Path("leaderboard/results.csv")  # `bench evaluate`'s results table
DEFAULT_LEADERBOARD = Path("leaderboard/README.md")  # `bench leaderboard`'s markdown


def finetuned_checkpoint(home: Path, dataset: str, backbone: str, protocol: str, fold: str) -> Path:
    """Where `bench train --protocol P --fold K` leaves its checkpoint and `bench extract --fold K` finds it."""
    for what, value in {"dataset": dataset, "protocol": protocol, "fold": fold}.items():
        check_name(what, value)
    return models_dir(home) / dataset / backbone_part(backbone) / f"{feature_key(protocol, fold)}.pt"


def backbone_part(name: str) -> str:
    """A backbone name as one path component of bench's folders (`timm:resnet18` -> `timm~resnet18`), or a
    BenchError when it is no backbone name."""
    if not is_backbone_name(name):
        raise BenchError(f"backbone {name!r} is not a name: names are {NAME_RULE}, or {PREFIXED_RULE}")
    return path_part(name)


def check_name(what: str, value: str, where: str = "") -> str:
    """`value`, if it is a plain name; else a BenchError. Names become path components (checkpoints, feature sets,
    study folders), so `../x` must never pass."""
    if not is_name(value):
        raise BenchError(f"{where}{what} {value!r} is not a name: names are {NAME_RULE}")
    return value
