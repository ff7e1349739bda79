"""A zarr v3 store of feature sets at `/{dataset}/{backbone}/{key}/`, written a whole chunk at a time.

Each set holds
- `features`  float32 (n, d) (float16 for trunk activations, bench.train.trunk), chunked along n only; rows never
  computed or skipped read as NaN, never zero;
- `image_ids` str (n,), fixed when the set is created;
- `skipped`   bool (n,), rows whose image could not be read (left out of `FeatureStore.read`);
- `image_sha256` str (n,), the content hash of each image the rows are computed from: a writer reopening the set
  with other hashes (an image changed in place, or fixed after it was skipped) recomputes those rows' chunks, and
  `FeatureSet.digests` lets a reader refuse features of images that changed since;
- `done`      bool (one per chunk of `features`), set only after that chunk's data is written,
and the provenance attributes the writer was given (model sha256, preprocessing, label fingerprint, ...), plus a
`creation_id` that every chunk write checks, so a writer whose set was replaced stops instead of writing into it.
One writer at a time per set: see `featurestore.lease`.

New sets' chunks carry a CRC32C of their stored bytes (zarr's own codec), so a truncated or bit-flipped chunk fails
its read instead of decoding to other numbers; a finished chunk that cannot be read back (or whose file is gone:
computed rows that read as NaN) is named by `read` and computed again by the next writer. Sets made before the
checksum read as they are (their truncated chunks are still found, not their flipped bits).

`done` rather than "the chunk file exists" marks completion because it is written strictly after the data on any
store (local, fsspec), an interrupted write of a chunk therefore never counts as finished, and zarr does not store a
chunk that equals the fill value at all, so existence cannot tell a finished all-NaN chunk from a missing one.
"""


from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import numpy as np
import zarr
from fsspec.registry import known_implementations
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.errors import GroupNotFoundError

from featurestore import lease
from featurestore.errors import StoreError
from featurestore.keys import NAME_RULE, PREFIXED_RULE, is_backbone_name, is_name, name_of, parse_key, path_part

# A set made with another value of any of these (or for other image ids) holds stale features.
IDENTITY = ("model_sha256", "preprocessing")
LAYOUT = "featurestore/1"
CHECKSUMMED = [ZstdCodec(), Crc32cCodec()]  # zarr's default compressor, then a checksum of what it stores


@dataclass(frozen=True)
class FeatureSet:
    """The readable rows of a complete set: skipped images are left out, never zero-filled."""

    image_ids: np.ndarray  # str (n,)
    features: np.ndarray  # float32 (n, d)
    digests: np.ndarray  # str (n,): sha256 of each image's content when its features were computed
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
    """Fills one set chunk by chunk; each finished chunk survives any interruption.

    It holds the set's write lease until the set is complete (or `release()`); a copy sent to another process (a
    Ray shard of the same extraction) writes under the same lease.
    """

    def __init__(self, group: zarr.Group, where: str, held: lease.Lease):
        self.group = group
        self.where = where  # "ds/bb/key in STORE", for messages
        self.lease = held
        self.creation_id = group.attrs.get("creation_id")
        self.features = group["features"]
        self.dtype = self.features.dtype
        self.chunk_rows = self.features.chunks[0]
        self.n_chunks = group["done"].shape[0]
        self.changed = 0  # rows whose image content changed since the set was last written
        self.damaged = 0  # finished chunks that could not be read back, to compute again

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
        features = np.array(features, dtype=self.dtype)  # a copy: skipped rows are overwritten below
        if features.shape != (len(rows), self.features.shape[1]):
            raise ValueError(f"chunk {chunk} takes features of shape {(len(rows), self.features.shape[1])}, got {features.shape}")
        window = slice(rows.start, rows.stop)
        skipped = np.zeros(len(rows), bool) if skipped is None else np.asarray(skipped, bool)
        features[skipped] = np.nan
        self._check_current()
        try:
            self.group["skipped"][window] = skipped  # always: a rerun may find an image readable that was not before
            self.features[window] = features
            self.group["done"][chunk] = True
        except OSError as exc:  # disk full, store gone read-only: what is done stays done
            done = self.n_chunks - len(self.missing_chunks())
            raise StoreError(f"cannot write chunk {chunk} of {self.where}: {exc}. The {done} finished chunk(s) are "
                             "kept: free space (or fix the store's permissions) and run the same command to resume") \
                from None
        if not self.missing_chunks():
            self.release()

    def release(self) -> None:
        """Let another writer have the set (done automatically once it is complete)."""
        self.lease.release()

    def _check_current(self) -> None:
        """Stop if the set was removed or replaced since this writer opened it: its rows would land in another
        set's chunks (another writer's ids, another creation)."""
        try:
            current = zarr.open_group(store=self.group.store, path=self.group.path, mode="r").attrs.get("creation_id")
        except (FileNotFoundError, GroupNotFoundError, KeyError):
            current = None
        if current != self.creation_id:
            raise StoreError(f"{self.where} was removed or replaced by another writer while this one ran; this run "
                             "stops without writing. Run the command again to extract into the set as it is now")

    def _refresh(self, image_digests: np.ndarray) -> None:
        """Mark for recomputing every chunk holding an image whose content is not what its row was computed from."""
        stored = np.array(self.group["image_sha256"][:].tolist(), dtype=str)
        changed = np.flatnonzero(stored != image_digests)
        self.changed = len(changed)
        if not self.changed:
            return
        for chunk in np.unique(changed // self.chunk_rows):  # done flags first: a kill in between loses nothing
            self.group["done"][int(chunk)] = False
        self.group["image_sha256"][:] = image_digests

    def _repair(self) -> None:
        """Mark for recomputing every finished chunk that cannot be read back."""
        damaged = _read_chunks(self.group)[2]
        self.damaged = len(damaged)
        for chunk in damaged:
            self.group["done"][chunk] = False


class FeatureStore:
    """`FeatureStore(path)`: a local folder or any URL zarr opens (e.g. `s3://bucket/store` with fsspec)."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def exists(self) -> bool:
        return self._root() is not None

    def read(self, dataset: str, backbone: str, key: str) -> FeatureSet:
        group = self._set(dataset, backbone, key)
        info = _info(group, dataset, backbone, key)
        if not info.complete:
            raise StoreError(
                f"feature set {dataset}/{backbone}/{key} in {self.path} is incomplete ({info.chunks_done} of "
                f"{info.chunks} chunks): re-run `{self.extract_command(dataset, backbone, key)}` to finish it"
            )
        features, skipped, damaged = _read_chunks(group)
        if damaged:
            rows = group["features"].chunks[0]
            shown = ", ".join(f"{c} (rows {c * rows}-{min((c + 1) * rows, info.n) - 1})" for c in damaged[:5])
            shown += f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
            raise StoreError(
                f"feature set {dataset}/{backbone}/{key} in {self.path} is damaged: chunk(s) {shown} of its "
                f"features cannot be read back (truncated, altered or missing files). Recompute exactly those with "
                f"`{self.extract_command(dataset, backbone, key)}`"
            )
        ids = _strings(group["image_ids"])
        digests = _strings(group["image_sha256"]) if "image_sha256" in group else np.full(len(ids), "")
        attrs = {**group.attrs.asdict(), "skipped": ids[skipped].tolist()}
        if not skipped.any():  # no copy: a trunk set's features are gigabytes
            return FeatureSet(image_ids=ids, features=features, digests=digests, attrs=attrs)
        return FeatureSet(image_ids=ids[~skipped], features=features[~skipped], digests=digests[~skipped],
                          attrs=attrs)

    def damaged(self, dataset: str, backbone: str, key: str) -> list[int]:
        """The set's finished chunks that cannot be read back (checksum, truncation, a chunk file gone)."""
        return _read_chunks(self._set(dataset, backbone, key))[2]

    def list(self) -> list[SetInfo]:
        root = self._root()
        if root is None:
            return []
        return [
            _info(group, dataset, name_of(part), key)
            for dataset, dataset_group in sorted(root.groups()) if dataset != lease.LEASES
            for part, backbone_group in sorted(dataset_group.groups())
            for key, group in sorted(backbone_group.groups())
            if group.attrs.get("layout") == LAYOUT
        ]

    def remove(self, dataset: str, backbone: str, key: str) -> None:
        self._set(dataset, backbone, key)  # a clear error when there is nothing to remove
        path = _path(dataset, backbone, key)
        held = self._lease(path)  # never pull a set from under its writer
        try:
            root = self._open("a")
            del root[path]
            for parent in (path.rsplit("/", 1)[0], dataset):  # no empty shells left behind in `ls` of the folder
                if not list(root[parent].members()):
                    del root[parent]
        finally:
            held.release()

    def open_for_write(
        self,
        dataset: str,
        backbone: str,
        key: str,
        *,
        image_ids: np.ndarray,
        image_digests: np.ndarray,
        dim: int,
        chunk_rows: int,
        attrs: dict,
        overwrite: bool = False,
        dtype: str = "float32",
    ) -> SetWriter:
        """The writer of a new set, or of the existing one when it was made by the same model for the same images.

        Takes the set's write lease first (StoreError when another live process holds it). An existing set with
        other provenance raises StoreError (never silently reused) unless `overwrite`; one with no finished chunk
        is replaced silently, as nothing in it can be lost. `image_digests` (one content hash per image) decide
        which finished chunks must be recomputed because their images changed. `attrs` must hold IDENTITY's keys.
        `dtype` is a new set's storage type.
        """
        missing = [k for k in IDENTITY if k not in attrs]
        if missing:
            raise ValueError(f"provenance attributes lack {missing}")
        bad = [name for name in (dataset, key) if not is_name(name)]
        if bad or not is_backbone_name(backbone):
            rule = NAME_RULE if bad else f"{NAME_RULE}; a backbone may also be {PREFIXED_RULE}"
            raise StoreError(f"{(bad or [backbone])[0]!r} cannot name a feature set: names are {rule}")
        path = _path(dataset, backbone, key)
        image_ids = np.asarray(image_ids, dtype=str)
        image_digests = np.asarray(image_digests, dtype=str)
        if image_digests.shape != image_ids.shape:
            raise ValueError("image_digests must hold one content hash per image id")
        untouched = None if overwrite else self._untouched(path, image_ids, image_digests, attrs)
        if untouched is not None:
            return untouched
        held = self._lease(path)
        try:
            writer = self._reopen(path, image_ids, attrs, overwrite, held)
            if writer is None:
                group = _create(self._open("a").require_group(path), image_ids, image_digests, dim, chunk_rows, attrs,
                                dtype)
                writer = SetWriter(group, self._where(path), held)
            writer._refresh(image_digests)
            writer._repair()
        except BaseException:
            held.release()
            raise
        if not writer.missing_chunks():
            held.release()  # nothing to write: the next writer need not wait
        return writer

    def _untouched(self, path: str, image_ids: np.ndarray, image_digests: np.ndarray,
                   attrs: dict) -> SetWriter | None:
        """The writer of a set there is nothing to do to (complete, made and labelled as now, of the same images,
        every chunk readable), found without taking the lease: a read-only store serves it, and nothing is
        written to it. None where anything is to be done."""
        root = self._root()
        group = root.get(path) if root is not None else None
        if (not isinstance(group, zarr.Group) or group.attrs.get("layout") != LAYOUT or "image_sha256" not in group
                or not group["done"][:].all()):
            return None
        stored = group.attrs.asdict()
        if _differences(group, attrs, image_ids) or any(_plain(stored.get(k)) != _plain(v) for k, v in attrs.items()):
            return None
        if not np.array_equal(_strings(group["image_sha256"]), image_digests) or _read_chunks(group)[2]:
            return None
        fs, root_path = self._fs()
        return SetWriter(group, self._where(path), lease.Lease(fs, f"{root_path}/{lease.LEASES}/{path}.json"))

    def _reopen(self, path: str, image_ids: np.ndarray, attrs: dict, overwrite: bool,
                held: lease.Lease) -> SetWriter | None:
        """The existing set's writer when it can be reused; None after removing one that cannot (or has nothing)."""
        root = self._open("a")
        if path not in root:
            return None
        group = root[path]
        if group.attrs.get("layout") == LAYOUT and group["done"][:].any() and not overwrite:
            differences = _differences(group, attrs, image_ids)
            if not differences:
                if "image_sha256" not in group:  # made before content hashes: no row is known current
                    group.create_array("image_sha256", shape=(len(image_ids),), dtype=str)[:] = ""
                group.attrs.update({k: v for k, v in attrs.items() if k not in IDENTITY})  # e.g. today's labels
                return SetWriter(group, self._where(path), held)
            dataset, part, key = path.split("/")
            backbone = name_of(part)
            raise StoreError(
                f"feature set {path} in {self.path} was made differently: {'; '.join(differences)}. Its features "
                f"would be stale, so they are not reused: remove it with `bench store rm {dataset} {backbone} {key} "
                f"--store {self.path}` and extract again, or pass --overwrite"
            )
        del root[path]
        return None

    def _lease(self, path: str) -> lease.Lease:
        self._open("a").require_group(lease.LEASES)  # a zarr group, so listing the store never trips over it
        fs, root = self._fs()
        return lease.acquire(fs, f"{root}/{lease.LEASES}/{path}.json", f"feature set {self._where(path)}")

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.path)
        return fs, root.rstrip("/")

    def _open(self, mode: str) -> zarr.Group:
        """The store's root group; an unusable URL or path is a StoreError naming it, never a library traceback."""
        # a file:// URL as the folder it names: zarr's local store makes missing folders, its fsspec one does not
        where = self.path.removeprefix("file://") if self.path.startswith("file:///") else self.path
        try:
            return zarr.open_group(where, mode=mode)
        except ImportError as exc:  # e.g. s3:// without s3fs
            raise StoreError(f"cannot open the store {self.path}: {exc} ({_package_hint(self.path)})") from None
        except GroupNotFoundError:  # a ValueError too, but one that says there is no store yet (`_root`)
            raise
        except ValueError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}. Pass a folder or an fsspec URL such as "
                             "s3://bucket/store") from None
        except PermissionError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}. Pass a folder you can write to") from None

    def _root(self) -> zarr.Group | None:
        try:
            return self._open("r")
        except (FileNotFoundError, GroupNotFoundError):
            return None

    def _set(self, dataset: str, backbone: str, key: str) -> zarr.Group:
        root = self._root()
        path = _path(dataset, backbone, key) if is_backbone_name(backbone) else f"{dataset}/{backbone}/{key}"
        if root is None or path not in root or root[path].attrs.get("layout") != LAYOUT:
            raise StoreError(
                f"no feature set {path} in {self.path}: make it with `{self.extract_command(dataset, backbone, key)}`"
            )
        return root[path]

    def _where(self, path: str) -> str:
        return f"{path} in {self.path}"

    def extract_command(self, dataset: str, backbone: str, key: str, root: str = "PATH") -> str:
        """The `bench extract` command that makes or refreshes this set."""
        command = f"bench extract --backbone {backbone} --dataset {dataset} --root {root}"
        finetuned = parse_key(key)
        if finetuned:
            command += " --protocol {} --fold {}".format(*finetuned)
        return f"{command} --store {self.path}"


def _package_hint(url: str) -> str:
    """Which package brings the fsspec filesystem of the URL's protocol (gcsfs for gs://, s3fs for s3://, ...)."""
    protocol = url.split("://", 1)[0]
    implementation = known_implementations.get(protocol, {}).get("class", "")
    package = implementation.split(".")[0] or "the fsspec filesystem package of the URL's protocol"
    return f"`pip install {package}` lets bench open {protocol}:// URLs"


def _create(group: zarr.Group, image_ids: np.ndarray, image_digests: np.ndarray, dim: int, chunk_rows: int,
            attrs: dict, dtype: str) -> zarr.Group:
    n = len(image_ids)
    group.create_array("features", shape=(n, dim), chunks=(chunk_rows, dim), dtype=dtype, fill_value=np.nan,
                       compressors=CHECKSUMMED)
    group.create_array("skipped", shape=(n,), chunks=(chunk_rows,), dtype=bool, fill_value=False,
                       compressors=CHECKSUMMED)
    group.create_array("done", shape=(-(-n // chunk_rows),), chunks=(1,), dtype=bool, fill_value=False,
                       compressors=CHECKSUMMED)
    group.create_array("image_ids", shape=(n,), dtype=str)[:] = image_ids
    group.create_array("image_sha256", shape=(n,), dtype=str)[:] = image_digests
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # the layout marker goes in last: a set whose creation was interrupted has none and is recreated next time
    group.attrs.update({**attrs, "n": n, "d": dim, "chunk_rows": chunk_rows, "created": created,
                        "creation_id": uuid.uuid4().hex, "layout": LAYOUT})
    return group


def _read_chunks(group: zarr.Group) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The set's features and skipped flags, read one finished chunk at a time (a failing read then names its
    chunk, and leaves no sibling reads pending), and the finished chunks that cannot be read back."""
    array = group["features"]
    features, skipped = np.full(array.shape, np.nan, array.dtype), np.zeros(array.shape[0], bool)
    rows, damaged = array.chunks[0], []
    for chunk in np.flatnonzero(group["done"][:]).tolist():
        window = slice(chunk * rows, (chunk + 1) * rows)
        try:
            features[window], skipped[window] = array[window], group["skipped"][window]
        except (ValueError, RuntimeError):  # the checksum codec's mismatch, a decompressor's truncated input
            damaged.append(chunk)
            continue
        if np.isnan(features[window][~skipped[window]]).any():  # a chunk file gone reads as the NaN fill value
            damaged.append(chunk)
    return features, skipped, damaged


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
    stored_ids = _strings(group["image_ids"])
    if len(stored_ids) != len(image_ids):
        differences.append(f"other images ({len(stored_ids)} stored, {len(image_ids)} now)")
    elif not np.array_equal(stored_ids, image_ids):
        differences.append("other images (the same number, other ids or order)")
    return differences


def _path(dataset: str, backbone: str, key: str) -> str:
    """Where a set lies in the store: a prefixed backbone name (`timm:resnet18`) as one component (`timm~resnet18`)."""
    return f"{dataset}/{path_part(backbone)}/{key}"


def _strings(array: zarr.Array) -> np.ndarray:
    """A str array as a plain numpy str array (zarr returns numpy's variable-width StringDType)."""
    return np.array(array[:].tolist(), dtype=str)


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
