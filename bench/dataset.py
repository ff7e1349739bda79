"""Dataset adapters and the manifest they produce: one row per image, in one vocabulary of diagnoses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.errors import BenchError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Every adapter maps its own labels onto these (melanoma subtypes and metastases are all `melanoma`).
DIAGNOSES = (
    "melanoma",
    "basal_cell_carcinoma",
    "squamous_cell_carcinoma",
    "actinic_keratosis",
    "nevus",
    "seborrheic_keratosis",
    "benign_keratosis",
    "dermatofibroma",
    "vascular",
    "lentigo",
    "melanosis",
    "other_benign",
    # the retinopathy source task (kaggle-dr): grade 0 (none) to 4 (proliferative)
    "retinopathy_0",
    "retinopathy_1",
    "retinopathy_2",
    "retinopathy_3",
    "retinopathy_4",
)
REQUIRED_COLUMNS = ("image_id", "path", "diagnosis")
OPTIONAL_COLUMNS = ("split", "difficulty", "lesion_id", "source_label")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class DatasetAdapter:
    """Turns what a user has on disk into a manifest DataFrame (see `validate_manifest`)."""

    name: str
    description: str
    load: Callable[..., pd.DataFrame]  # load(root: Path | None, **options: str) -> manifest
    needs_root: bool = True
    plugin: str = field(default="", compare=False)

    def manifest(self, root: Path | None = None, **options: str) -> pd.DataFrame:
        """The validated manifest; any problem is one BenchError listing every offending row or file."""
        if self.needs_root and root is None:
            raise BenchError(f"dataset {self.name!r} needs --root PATH (the folder holding its files)")
        if root is not None and not Path(root).is_dir():
            raise BenchError(f"--root {root} is not a folder")
        manifest = self.load(Path(root) if root is not None else None, **options)
        return validate_manifest(manifest, self.name)


def validate_manifest(manifest: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Check columns, vocabulary, unique ids and that every image exists; return it with a clean index."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise BenchError(f"{dataset}: manifest lacks column(s) {missing}")
    if manifest.empty:
        source = manifest.attrs.get("source")  # the labels file, where the adapter says which it read
        raise BenchError(f"{dataset}: {source} lists no images. Check that it is the dataset's labels file" if source
                         else f"{dataset}: the manifest has no images")
    unknown = sorted(set(manifest["diagnosis"]) - set(DIAGNOSES))
    if unknown:
        raise BenchError(f"{dataset}: diagnoses outside the vocabulary: {unknown}; known: {', '.join(DIAGNOSES)}")
    check_ids(manifest, dataset)
    absent = [p for p in manifest["path"] if not Path(p).is_file()]
    if absent:
        raise BenchError(f"{dataset}: {len(absent)} image file(s) missing: {few(absent)}")
    return manifest.reset_index(drop=True)


def check_ids(manifest: pd.DataFrame, dataset: str) -> None:
    """Every image id present and listed once; the error names the file the rows came from where it is known."""
    source = manifest.attrs.get("source", "its labels file")  # set by adapters that read one CSV
    blank = manifest.index[manifest["image_id"].isna() | (manifest["image_id"].astype(str).str.strip() == "")]
    if len(blank):
        raise BenchError(f"{dataset}: {len(blank)} row(s) of {source} have a blank image id (data rows "
                         f"{few([i + 1 for i in blank])}): fill them in or delete those rows")
    duplicated = manifest["image_id"][manifest["image_id"].duplicated()].tolist()
    if duplicated:
        raise BenchError(f"{dataset}: duplicated image ids in {source}: {few(duplicated)}; list each image once")


def index_images(root: Path) -> dict[str, Path]:
    """Every image under `root`, keyed by its lower-cased file stem, so any folder layout works."""
    index: dict[str, Path] = {}
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.stem.lower(), path)
    return index


def find_file(root: Path, name: str, given: Path | None = None) -> Path:
    """`given` if set, else the file called `name` anywhere under `root`; a clear error when there is none."""
    if given is not None:
        if not Path(given).is_file():
            raise BenchError(f"file not found: {given}")
        return Path(given)
    hits = sorted(Path(root).rglob(name))
    if not hits:
        raise BenchError(f"{name} not found under {root}: put it there or pass its path explicitly")
    return hits[0]


def attach_paths(manifest: pd.DataFrame, root: Path, dataset: str) -> pd.DataFrame:
    """Fill `path` from `image_id` by file stem; one error listing every image that is not found."""
    check_ids(manifest, dataset)
    index = index_images(root)
    paths = manifest["image_id"].map(lambda i: index.get(str(i).lower()))
    if paths.isna().any():
        absent = manifest.loc[paths.isna(), "image_id"].tolist()
        raise BenchError(f"{dataset}: {len(absent)} image(s) listed but not found under {root}: {few(absent)}")
    return manifest.assign(path=paths.map(str))


def image_digests(manifest: pd.DataFrame) -> np.ndarray:
    """sha256 of each image file's content, in manifest order (see `bench.digests` for the cache that keeps a
    rerun from reading unchanged files again)."""
    from bench import digests  # here: listing datasets needs neither numpy nor the hash cache

    return digests.file_digests(manifest["path"].astype(str).tolist())


def label_fingerprint(manifest: pd.DataFrame) -> str:
    """sha256 over ids and diagnoses: what an evaluation's labels depend on (extraction does not)."""
    return _sha256_lines(f"{i}\t{d}" for i, d in manifest[["image_id", "diagnosis"]].itertuples(index=False))


def fingerprint(manifest: pd.DataFrame) -> str:
    """sha256 over ids, labels and image contents: changes when anything a result came from changes, and not when
    the data merely moves (paths are left out)."""
    rows = zip(manifest["image_id"], manifest["diagnosis"], image_digests(manifest))
    return _sha256_lines(f"{i}\t{d}\t{h}" for i, d, h in rows)


def _sha256_lines(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()


def few(items: list, n: int = 10) -> str:
    """The first `n` items for an error message, and how many more there are."""
    shown = ", ".join(map(str, items[:n]))
    return shown + (f" ... and {len(items) - n} more" if len(items) > n else "")
