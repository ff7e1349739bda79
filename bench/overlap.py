"""Whether the images a model is scored on are pictures it was trained on, decided by content, never by name.

Public dermoscopy sets copy each other under new names and sizes (DermaMNIST is HAM10000 resized; the ISIC
challenges re-use the archive), so an id or a file name proves nothing. Two images are the same picture when their
bytes are (sha256, `bench.digests`) or when their perceptual hashes are within THRESHOLD bits: the 64-bit DCT hash
(phash) and the 64-bit gradient hash (dhash) of `imagehash`, compared together as 128 bits. Both survive resizing
and JPEG re-compression; together they separate copies from other pictures better than either alone. Chosen by
measurement (docs/lab-notes.md): 1,800 resized / re-compressed copies of HAM10000 images lie within 10 bits of
their originals, while no HAM10000 x PH2 pair (2 million) comes closer than 18. Within one archive lookalikes of
another lesion come closer (4% of HAM10000's images have one within the threshold): there the guard lists more
than the copies, and --drop-overlap leaves them out too.

A hash is computed from the image decoded at HASH_INPUT px (`bench.images.load_image`, the decoder extraction uses)
and cached by the file's sha256 next to the digests, so a rerun, or a renamed copy, reads no pixels.
"""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.dataset import few, image_digests
from bench.digests import lookup, open_cache
from bench.errors import BenchError
from bench.images import load_image

THRESHOLD = 14  # bits of the 128: copies measured at <= 10, another set's pictures at >= 18
HASH_INPUT = 64  # px: enough for a 32 px phash, and JPEG decodes at a fraction of its size
CHUNK = 512  # test images compared at once: CHUNK x train x 16 bytes stays a few tens of MB
CONTENT = ["image_id", "sha256", "perceptual"]  # a content record, what a trained model keeps of its images
TRAINED_ON = "source_images"  # a source stage checkpoint's meta: the content record of the images it trained on
SOURCE_OVERLAP = "source_overlap"  # a set whose backbone has a source stage: its images that stage trained on
ID_ONLY = "source_image_ids"  # what checkpoints and sets recorded before the content guard: ids only
DROP_FIX = "leave them out with --drop-overlap (the row counts them), or score on images that were not trained on"


@dataclass(frozen=True)
class Overlap:
    """Test images that are pictures of the training side, each with the training image it matches (the nearest):
    columns test_id, train_id, how ("digest": the same file; "perceptual": the same picture, resized or
    re-compressed) and distance (bits of the perceptual hash; 0 for a digest)."""

    matches: pd.DataFrame

    def __len__(self) -> int:
        return len(self.matches)

    @property
    def test_ids(self) -> list[str]:
        return self.matches["test_id"].tolist()

    def to_records(self) -> list[dict]:
        """JSON-ready rows, for a feature set's attrs or a checkpoint's meta."""
        return self.matches.to_dict(orient="records")

    @classmethod
    def from_records(cls, records: list[dict]) -> Overlap:
        return cls(pd.DataFrame(records, columns=["test_id", "train_id", "how", "distance"]))


def content(images: pd.DataFrame) -> pd.DataFrame:
    """The content record of a manifest's images (image_id, sha256, perceptual as 32 hex digits); a record
    passes through unchanged."""
    if set(CONTENT) <= set(images.columns):
        return images[CONTENT].reset_index(drop=True)
    digests = image_digests(images)
    return pd.DataFrame({"image_id": images["image_id"].astype(str).to_numpy(), "sha256": digests,
                         "perceptual": perceptual_hashes(images["path"].astype(str).tolist(), digests)})


def find_overlap(train: pd.DataFrame, test: pd.DataFrame, threshold: int = THRESHOLD) -> Overlap:
    """The test images that are pictures of the training side. Each side is a manifest (image_id, path) or a
    content record (`content`, e.g. what a source stage recorded of its training images)."""
    train, test = content(train), content(test)
    if train.empty or test.empty:
        return Overlap.from_records([])
    nearest, distance = _nearest(_bits(test["perceptual"]), _bits(train["perceptual"]))
    same_file = test["sha256"].map(train.groupby("sha256")["image_id"].first())
    digest = same_file.notna().to_numpy()
    matches = pd.DataFrame({"test_id": test["image_id"],
                            "train_id": np.where(digest, same_file, train["image_id"].to_numpy()[nearest]),
                            "how": np.where(digest, "digest", "perceptual"), "distance": np.where(digest, 0, distance)})
    return Overlap(matches[digest | (distance <= threshold)].reset_index(drop=True))


def refusal(overlap: Overlap, train: str, test: str, fix: str = DROP_FIX) -> BenchError:
    """The one-line error for scoring on pictures of the training side, naming them (`=`: the same file, `~`: the
    same picture resized or re-compressed) and the fix."""
    pairs = [f"{m.test_id} = {m.train_id}" if m.how == "digest" else f"{m.test_id} ~ {m.train_id} ({m.distance} bits)"
             for m in overlap.matches.itertuples()]
    return BenchError(f"{len(overlap)} image(s) of {test} are pictures {train} trained on ({few(pairs, 3)}): scoring "
                      f"them would test on training images; {fix}")


def perceptual_hashes(paths: list[str], digests: np.ndarray) -> np.ndarray:
    """phash and dhash of each image as 32 hex digits, cached by content digest."""
    try:
        with closing(open_cache()) as db:
            db.execute("CREATE TABLE IF NOT EXISTS perceptual (sha256 TEXT PRIMARY KEY, hash TEXT)")
            known = dict(lookup(db, "SELECT sha256, hash FROM perceptual WHERE sha256 IN ({})", sorted(set(digests))))
            todo = {d: p for p, d in zip(paths, digests) if d not in known}
            fresh = dict(zip(todo, _hash(list(todo.values()))))
            with db:
                db.executemany("INSERT OR REPLACE INTO perceptual VALUES (?, ?)", fresh.items())
    except sqlite3.Error:  # a read-only or full $BENCH_HOME costs speed, never the answer
        known, fresh = {}, dict(zip(digests, _hash(paths)))
    known.update(fresh)
    return np.array([known[d] for d in digests], dtype=str)


def _hash(paths: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL while decoding
        return list(pool.map(_perceptual, paths))


def _perceptual(path: str) -> str:
    import imagehash  # here: only a guard that hashes pays for it
    from PIL import Image

    image = Image.fromarray(load_image(path, HASH_INPUT))
    return str(imagehash.phash(image)) + str(imagehash.dhash(image))


def _nearest(test: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each test hash, the nearest training hash and its distance in bits (XOR, then numpy's popcount)."""
    nearest, distance = [], []
    for start in range(0, len(test), CHUNK):
        bits = np.bitwise_count(test[start:start + CHUNK, None, :] ^ train[None]).sum(axis=2, dtype=np.int32)
        nearest.append(bits.argmin(axis=1))
        distance.append(bits.min(axis=1))
    return np.concatenate(nearest), np.concatenate(distance)


def _bits(hashes: pd.Series) -> np.ndarray:
    """(n, 2) uint64 from 32 hex digits: phash, dhash."""
    return np.array([(int(h[:16], 16), int(h[16:], 16)) for h in hashes], dtype=np.uint64).reshape(-1, 2)

