"""Where bench keeps what it makes, so every stage finds the others' outputs."""

import os
from pathlib import Path


def home() -> Path:
    """Root for weights, trained models, ONNX files and generated datasets (`$BENCH_HOME`, else ~/.cache/bench)."""
    return Path(os.environ.get("BENCH_HOME") or Path.home() / ".cache" / "bench")


def weights_dir() -> Path:
    """Initial weights of backbones: imported ImageNet files and trained source stages (e.g. `retino.pt`)."""
    return home() / "weights"


def models_dir() -> Path:
    """Fine-tuned checkpoints: `models/{dataset}/{backbone}/ft-{protocol}-{fold}.pt`."""
    return home() / "models"


def onnx_dir() -> Path:
    """Exported ONNX models, cached by content hash."""
    return home() / "onnx"


def datasets_dir() -> Path:
    """Datasets bench generates or downloads itself (synthetic, DermaMNIST)."""
    return home() / "datasets"


def default_store() -> Path:
    """The zarr feature store used when `--store` is not given."""
    return Path(os.environ.get("BENCH_STORE") or "bench-store")


DEFAULT_RESULTS = Path("leaderboard/results.csv")  # `bench evaluate`'s results table
DEFAULT_LEADERBOARD = Path("leaderboard/README.md")  # `bench leaderboard`'s markdown


def feature_key(protocol: str | None = None, fold: str | None = None) -> str:
    """Feature-set key: `frozen`, or `ft-{protocol}-{fold}` for the model fine-tuned on that fold's training part.

    The protocol is part of the key because a fine-tune learns that protocol's classes.
    """
    if fold is None:
        return "frozen"
    if protocol is None:
        raise ValueError("a fine-tuned feature set needs its protocol as well as its fold")
    return f"ft-{protocol}-{fold}"


def finetuned_checkpoint(dataset: str, backbone: str, protocol: str, fold: str) -> Path:
    """Where `bench train --protocol P --fold K` leaves its checkpoint and `bench extract --fold K` finds it."""
    return models_dir() / dataset / backbone / f"{feature_key(protocol, fold)}.pt"
