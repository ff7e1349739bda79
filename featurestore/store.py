"""A zarr v3 store of feature sets at `/{dataset}/{backbone}/{key}/`, written a whole chunk at a time.

Each set holds
- `features`  float32 (n, d), chunked along n only; rows never computed or skipped read as NaN, never zero;
- `image_ids` str (n,), fixed when the set is created;
- `skipped`   bool (n,), rows whose image could not be read (left out of `FeatureStore.read`);
- `done`      bool (one per chunk of `features`), set only after that chunk's data is written,
and the provenance attributes the writer was given (model sha256, preprocessing, dataset fingerprint, ...).

`done` rather than "the chunk file exists" marks completion because it is written strictly after the data on any
store (local, fsspec), an interrupted write of a chunk therefore never counts as finished, and zarr does not store a
chunk that equals the fill value at all, so existence cannot tell a finished all-NaN chunk from a missing one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError

from featurestore.errors import StoreError

# A set made with another value of any of these (or for other image ids) holds stale features.
IDENTITY = ("model_sha256", "preprocessing", "dataset_fingerprint")
LAYOUT = "featurestore/1"


@dataclass(frozen=True)
class FeatureSet:
    """The readable rows of a complete set: skipped images are left out, never zero-filled."""

    image_ids: np.ndarray  # str (n,)
    features: np.ndarray  # float32 (n, d)
    attrs: dict  # provenance, plus `skipped`: the image ids left out because they could not be read


@dataclass(frozen=True)
class SetInfo:
    dataset: str
    backbone: str
    key: str
    n: int  # rows, skipped ones included
    d: int
    chunks_done: int
    chunks: int
    skipped: int
    model_sha256: str
    created: str

    @property
    def complete(self) -> bool:
        return self.chunks_done == self.chunks


class SetWriter:
    """Fills one set chunk by chunk; each finished chunk survives any interruption."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.features = group["features"]
        self.chunk_rows = self.features.chunks[0]
        self.n_chunks = group["done"].shape[0]

    @property
    def n(self) -> int:
        return self.features.shape[0]

    def missing_chunks(self) -> list[int]:
        return np.flatnonzero(~self.group["done"][:]).tolist()

    def chunk_rows_of(self, chunk: int) -> range:
        """The row indices chunk `chunk` covers (the last one may be short)."""
        return range(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n))

    def write_chunk(self, chunk: int, features: np.ndarray, skipped: np.ndarray | None = None) -> None:
        """Write all rows of `chunk` at once (zarr loses data when a chunk is written piecewise), then mark it done.

        `skipped` flags rows whose image could not be read; their features are stored as NaN whatever is passed.
        """
        rows = self.chunk_rows_of(chunk)
        features = np.array(features, dtype=np.float32)  # a copy: skipped rows are overwritten below
        if features.shape != (len(rows), self.features.shape[1]):
            raise ValueError(f"chunk {chunk} takes features of shape {(len(rows), self.features.shape[1])}, got {features.shape}")
        window = slice(rows.start, rows.stop)
        skipped = np.zeros(len(rows), bool) if skipped is None else np.asarray(skipped, bool)
        features[skipped] = np.nan
        self.group["skipped"][window] = skipped  # always: a rerun may find an image readable that was not before
        self.features[window] = features
        self.group["done"][chunk] = True


class FeatureStore:
    """`FeatureStore(path)`: a local folder or any URL zarr opens (e.g. `s3://bucket/store` with fsspec)."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def read(self, dataset: str, backbone: str, key: str) -> FeatureSet:
        group = self._set(dataset, backbone, key)
        info = _info(group, dataset, backbone, key)
        if not info.complete:
            raise StoreError(
                f"feature set {dataset}/{backbone}/{key} in {self.path} is incomplete ({info.chunks_done} of "
                f"{info.chunks} chunks): re-run `{self._extract_command(dataset, backbone, key)}` to finish it"
            )
        ids = _image_ids(group)
        keep = ~group["skipped"][:]
        attrs = {**group.attrs.asdict(), "skipped": ids[~keep].tolist()}
        return FeatureSet(image_ids=ids[keep], features=group["features"][:][keep], attrs=attrs)

    def list(self) -> list[SetInfo]:
        root = self._root()
        if root is None:
            return []
        return [
            _info(group, dataset, backbone, key)
            for dataset, dataset_group in sorted(root.groups())
            for backbone, backbone_group in sorted(dataset_group.groups())
            for key, group in sorted(backbone_group.groups())
            if group.attrs.get("layout") == LAYOUT
        ]

    def remove(self, dataset: str, backbone: str, key: str) -> None:
        self._set(dataset, backbone, key)  # a clear error when there is nothing to remove
        root = zarr.open_group(self.path, mode="a")
        del root[f"{dataset}/{backbone}/{key}"]
        for parent in (f"{dataset}/{backbone}", dataset):  # no empty shells left behind in `ls` of the folder
            if not list(root[parent].members()):
                del root[parent]

    def open_for_write(
        self,
        dataset: str,
        backbone: str,
        key: str,
        *,
        image_ids: np.ndarray,
        dim: int,
        chunk_rows: int,
        attrs: dict,
        overwrite: bool = False,
    ) -> SetWriter:
        """The writer of a new set, or of the existing one when it was made by the same model for the same images.

        An existing set with other provenance raises StoreError (never silently reused) unless `overwrite`; one with
        no finished chunk is replaced silently, as nothing in it can be lost. `attrs` must hold IDENTITY's keys.
        """
        missing = [k for k in IDENTITY if k not in attrs]
        if missing:
            raise ValueError(f"provenance attributes lack {missing}")
        path = f"{dataset}/{backbone}/{key}"
        root = zarr.open_group(self.path, mode="a")
        image_ids = np.asarray(image_ids, dtype=str)
        if path in root:
            writer = SetWriter(root[path]) if root[path].attrs.get("layout") == LAYOUT else None
            finished = writer is not None and len(writer.missing_chunks()) < writer.n_chunks
            if finished and not overwrite:
                differences = _differences(root[path], attrs, image_ids)
                if not differences:
                    return writer
                raise StoreError(
                    f"feature set {path} in {self.path} was made differently: {'; '.join(differences)}. Its features "
                    f"would be stale, so they are not reused: remove it with `bench store rm {dataset} {backbone} {key} "
                    f"--store {self.path}` and extract again, or pass --overwrite"
                )
            del root[path]
        return SetWriter(_create(root.require_group(path), image_ids, dim, chunk_rows, attrs))

    def _root(self) -> zarr.Group | None:
        try:
            return zarr.open_group(self.path, mode="r")
        except (FileNotFoundError, GroupNotFoundError):
            return None

    def _set(self, dataset: str, backbone: str, key: str) -> zarr.Group:
        root = self._root()
        path = f"{dataset}/{backbone}/{key}"
        if root is None or path not in root or root[path].attrs.get("layout") != LAYOUT:
            raise StoreError(
                f"no feature set {path} in {self.path}: make it with `{self._extract_command(dataset, backbone, key)}`"
            )
        return root[path]

    def _extract_command(self, dataset: str, backbone: str, key: str) -> str:
        command = f"bench extract --backbone {backbone} --dataset {dataset} --root PATH"
        if key.startswith("ft-"):  # `ft-{protocol}-{fold}`; fold keys (r0f1, official) hold no hyphen
            protocol, fold = key[3:].rsplit("-", 1)
            command += f" --protocol {protocol} --fold {fold}"
        return f"{command} --store {self.path}"


def _create(group: zarr.Group, image_ids: np.ndarray, dim: int, chunk_rows: int, attrs: dict) -> zarr.Group:
    n = len(image_ids)
    group.create_array("features", shape=(n, dim), chunks=(chunk_rows, dim), dtype="float32", fill_value=np.nan)
    group.create_array("skipped", shape=(n,), chunks=(chunk_rows,), dtype=bool, fill_value=False)
    group.create_array("done", shape=(-(-n // chunk_rows),), chunks=(1,), dtype=bool, fill_value=False)
    group.create_array("image_ids", shape=(n,), dtype=str)[:] = image_ids
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # the layout marker goes in last: a set whose creation was interrupted has none and is recreated next time
    group.attrs.update({**attrs, "n": n, "d": dim, "chunk_rows": chunk_rows, "created": created, "layout": LAYOUT})
    return group


def _differences(group: zarr.Group, attrs: dict, image_ids: np.ndarray) -> list[str]:
    """What makes an existing set not the one these attributes and ids describe, in words."""
    stored = group.attrs.asdict()
    differences = []
    if stored.get("model_sha256") != attrs["model_sha256"]:
        differences.append(
            f"another model (sha256 {str(stored.get('model_sha256'))[:12]} stored, {attrs['model_sha256'][:12]} now)"
        )
    old, new = _plain(stored.get("preprocessing") or {}), _plain(attrs["preprocessing"])
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k} {old.get(k)} stored, {new.get(k)} now" for k in changed)
        differences.append(f"other preprocessing ({shown})")
    stored_ids = _image_ids(group)
    if len(stored_ids) != len(image_ids):
        differences.append(f"other images ({len(stored_ids)} stored, {len(image_ids)} now)")
    elif not np.array_equal(stored_ids, image_ids):
        differences.append("other images (the same number, other ids or order)")
    elif stored.get("dataset_fingerprint") != attrs["dataset_fingerprint"]:
        differences.append("another dataset fingerprint (image files or labels changed since)")
    return differences


def _image_ids(group: zarr.Group) -> np.ndarray:
    """The ids as a plain numpy str array (zarr returns numpy's variable-width StringDType)."""
    return np.array(group["image_ids"][:].tolist(), dtype=str)


def _plain(value):
    """JSON round trip, so tuples compare equal to the lists zarr gives back."""
    return json.loads(json.dumps(value))


def _info(group: zarr.Group, dataset: str, backbone: str, key: str) -> SetInfo:
    attrs = group.attrs.asdict()
    done = group["done"][:]
    return SetInfo(
        dataset=dataset,
        backbone=backbone,
        key=key,
        n=int(attrs["n"]),
        d=int(attrs["d"]),
        chunks_done=int(done.sum()),
        chunks=len(done),
        skipped=int(np.count_nonzero(group["skipped"][:])),
        model_sha256=str(attrs["model_sha256"]),
        created=str(attrs["created"]),
    )
