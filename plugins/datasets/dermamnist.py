"""`dermamnist`: MedMNIST's DermaMNIST (HAM10000 resized), from an npz the user has or that `medmnist` downloads.

The images are written out once as PNG files under `bench.paths.datasets_dir()` so the manifest has real paths
like every other dataset. MedMNIST's validation part is merged into `train` (its ids keep the `val_` prefix):
bench chooses C on a split of each training fold itself, so a fixed validation set has no role, and the official
train/test split stays the one MedMNIST defines.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import paths
from bench.dataset import find_file
from bench.errors import BenchError
from plugins.datasets.common import checked_options, finish, generated, optional_path

DESCRIPTION = ("DermaMNIST (MedMNIST v2/v3): dermamnist[_64|_128|_224].npz under --root, or downloaded once by "
               "the optional medmnist package when online; official split, val merged into train "
               "(options size=28, npz=)")
# MedMNIST's label numbers, in order
LABELS = ("actinic_keratosis", "basal_cell_carcinoma", "benign_keratosis", "dermatofibroma", "melanoma", "nevus",
          "vascular")
SIZES = (28, 64, 128, 224)
PARTS = {"train": "train", "val": "train", "test": "test"}  # MedMNIST part -> manifest split


@checked_options("dermamnist")
def load(root: Path | None = None, size: int = 28, npz: str = "") -> pd.DataFrame:
    if size not in SIZES:
        raise BenchError(f"dermamnist: size={size} is not one MedMNIST makes; choose one of {SIZES}")
    name = "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"
    source = find_file(root, name, optional_path(npz)) if root or npz else _downloaded(name, size)
    arrays = _read(source)  # checked before anything is written
    with open(source, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return finish(generated(f"dermamnist-{size}", {"npz_sha256": digest}, lambda folder: _write(folder, arrays)))


def _downloaded(name: str, size: int) -> Path:
    """The npz in bench's own cache, fetched there by the optional `medmnist` package the first time."""
    folder = paths.datasets_dir(paths.home()) / "medmnist"
    if (folder / name).is_file():
        return folder / name
    try:
        import medmnist
    except ImportError:
        raise BenchError(f"dermamnist: no {name}. Either `pip install bench[medmnist]` (it downloads the file once, "
                         f"needs internet) or put {name} in a folder and pass --root FOLDER "
                         f"(or --option npz=PATH)") from None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        medmnist.DermaMNIST(split="train", download=True, root=str(folder), size=size)
    except Exception as exc:  # whatever the network or medmnist raises, the fix is the same
        raise BenchError(f"dermamnist: medmnist could not download {name} into {folder}: {exc}. Check the "
                         f"connection, or put {name} there (or anywhere, with --root)") from exc
    if not (folder / name).is_file():
        raise BenchError(f"dermamnist: medmnist ran but left no {name} in {folder}; put the file there by hand")
    return folder / name


def _read(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, labels) per MedMNIST part; one error naming the file and what is wrong with it."""
    try:
        with np.load(path) as data:
            missing = [f"{part}_{kind}" for part in PARTS for kind in ("images", "labels")
                       if f"{part}_{kind}" not in data]
            if missing:
                raise BenchError(f"dermamnist: {path} lacks array(s) {missing}; is it MedMNIST's DermaMNIST npz?")
            arrays = {part: (data[f"{part}_images"], data[f"{part}_labels"].reshape(-1)) for part in PARTS}
    except (OSError, ValueError, EOFError) as exc:
        raise BenchError(f"dermamnist: cannot read {path} as an npz ({exc}); download it again") from exc
    for part, (images, labels) in arrays.items():
        bad = sorted({int(v) for v in labels if not 0 <= v < len(LABELS)})
        if bad or images.ndim not in (3, 4) or len(images) != len(labels):
            raise BenchError(f"dermamnist: {path}: {part} has {images.shape} images, {len(labels)} labels"
                             f"{f', labels outside 0-6: {bad}' if bad else ''}; is it MedMNIST's DermaMNIST npz?")
    return arrays


def _write(folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    rows = []
    for part, (images, labels) in arrays.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            image_id = f"{part}_{index:05d}"
            Image.fromarray(image).convert("RGB").save(folder / f"{image_id}.png")
            rows.append({"image_id": image_id, "path": f"{image_id}.png", "diagnosis": LABELS[int(label)],
                         "split": PARTS[part]})
    return pd.DataFrame(rows)
