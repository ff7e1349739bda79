"""The features an evaluation scores, read from the store: one backbone's set, or the fusion of several (`A+B`:
each set L2-normalised, then concatenated), optionally power-normalised, TTA sets where asked.

Refused here, before any SVM is fitted: fusing sets of other images, and scoring a backbone on pictures its source
stage trained on (found by content when the set was extracted, see `bench.overlap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from sklearn.preprocessing import normalize

from bench.errors import BenchError
from bench.overlap import ID_ONLY, SOURCE_OVERLAP, Overlap, refusal
from featurestore import FeatureSet, FeatureStore, feature_key
from featurestore.keys import check_tta

FUSION = "+"
DROPPED = "overlap_dropped"  # a set read with drop_overlap: the evaluated images left out as training pictures


def members(backbone: str) -> list[str]:
    """The backbones whose sets an evaluation reads: `A+B` -> [A, B]."""
    names = backbone.split(FUSION)
    if not all(names) or len(set(names)) != len(names):
        raise BenchError(f"--backbone {backbone!r}: fuse distinct backbones as A+B (e.g. "
                         "efficientnet-lite0+efficientnet-lite2)")
    return names


def display_name(backbone: str, tta: str | None, power: bool) -> str:
    """The name an evaluation's rows carry: the backbone(s), then what was done to the features, so a TTA or
    power-normalised evaluation is a leaderboard row of its own (`efficientnet-lite0 [tta dihedral, power]`)."""
    done = [f"tta {tta}"] * bool(tta) + ["power"] * power
    return f"{backbone} [{', '.join(done)}]" if done else backbone


def parse(spec: str) -> tuple[str, str | None, bool]:
    """A `display_name` read back, as a study lists it: `A+B [tta dihedral, power]` -> ("A+B", "dihedral", True)."""
    backbone, bracket, rest = spec.partition(" [")
    done = [d.strip() for d in rest.removesuffix("]").split(",")] if bracket else []
    tta = next((d.removeprefix("tta ") for d in done if d.startswith("tta ")), None)
    unknown = [d for d in done if d != "power" and not d.startswith("tta ")]
    if unknown or (bracket and not rest.endswith("]")):
        raise BenchError(f"{spec!r}: write what is done to the features as `BACKBONE [tta dihedral, power]`")
    return backbone, check_tta(tta), "power" in done


def reader(store: Path | str, dataset: str, backbone: str, protocol: str | None = None, *, tta: str | None = None,
           power: bool = False, image_ids: Iterable[str] = (), drop_overlap: bool = False
           ) -> Callable[[str | None], FeatureSet]:
    """fold -> the feature set to score: the frozen set for None, else the set fine-tuned on that fold for
    `protocol` (each store set read once). `image_ids` are the scored images: a set whose backbone's source stage
    trained on pictures among them is refused, or with `drop_overlap` those images are named in its attrs[DROPPED]
    for evaluation to leave out."""
    names, store_, cache = members(backbone), FeatureStore(store), {}
    evaluated = set(map(str, image_ids))  # once, not per fold
    check_tta(tta)

    def read(fold: str | None) -> FeatureSet:
        key = feature_key(protocol, fold, tta)
        if key not in cache:
            sets = [store_.read(dataset, name, key) for name in names]
            found = {name: trained_on(features.attrs, evaluated, name, dataset) for name, features in zip(names, sets)}
            for name, overlap in found.items():
                if len(overlap) and not drop_overlap:
                    raise refusal(overlap, f"{name}'s source stage", dataset, "leave them out with --drop-overlap, "
                                  "evaluate it on a dataset its source stage did not train on, or train the source "
                                  "stage on another one")
            cache[key] = fuse(sets, names, power)
            cache[key].attrs[DROPPED] = sorted({i for overlap in found.values() for i in overlap.test_ids})
        return cache[key]

    return read


def trained_on(attrs: dict, image_ids: set[str], backbone: str, dataset: str) -> Overlap:
    """The evaluated images that are pictures the backbone's source stage trained on, as its set's extraction
    recorded them."""
    if attrs.get(ID_ONLY) and SOURCE_OVERLAP not in attrs:  # an empty list: the backbone has no source stage
        raise BenchError(f"the {dataset} features of {backbone} were extracted when bench compared its source stage's "
                         "training images by id only: run `bench extract` for them again with --overwrite (and, if it "
                         "says so, train the source stage again) so that pictures are compared by content")
    found = Overlap.from_records(attrs.get(SOURCE_OVERLAP, []))
    return Overlap(found.matches[found.matches["test_id"].isin(image_ids)].reset_index(drop=True))


def fuse(sets: list[FeatureSet], names: list[str], power: bool) -> FeatureSet:
    """One set: each member power-normalised if asked, L2-normalised where there are several, concatenated in
    the first set's row order. Sets of different images are refused."""
    first = sets[0]
    order = pd.Index(first.image_ids)
    parts = []
    for name, features in zip(names, sets):
        if set(features.image_ids) != set(first.image_ids):
            extra = sorted(set(features.image_ids).symmetric_difference(first.image_ids))
            raise BenchError(f"cannot fuse {names[0]} and {name}: their feature sets hold different images (e.g. "
                             f"{', '.join(map(str, extra[:3]))}; {len(extra)} in one only). Extract both from the "
                             "same dataset, without --limit, and with the same --skip-bad outcome")
        rows = pd.Index(features.image_ids).get_indexer(order)
        if not np.array_equal(features.digests[rows], first.digests):
            raise BenchError(f"cannot fuse {names[0]} and {name}: they were extracted from different contents of "
                             "some images; run `bench extract` for both again, which refreshes what changed")
        x = features.features[rows]
        x = signed_sqrt(x) if power else x
        parts.append(normalize(x) if len(sets) > 1 else x)
    records = [s.attrs.get("fold_record") for s in sets]
    if any(record != records[0] for record in records):
        raise BenchError(f"cannot fuse {' and '.join(names)}: their fine-tunes were trained on different folds or "
                         "images; fine-tune every member on the fold evaluated, with the same --split and --seed")
    attrs = {**first.attrs, "model_sha256": FUSION.join(s.attrs.get("model_sha256", "") for s in sets),
             "skipped": sorted({i for s in sets for i in s.attrs.get("skipped", [])})}
    return FeatureSet(image_ids=first.image_ids, features=np.hstack(parts).astype(np.float32), digests=first.digests,
                      attrs=attrs)


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """Power normalisation, sign(x) sqrt|x|: damps the few large activations that dominate a pooled CNN feature."""
    return np.sign(x) * np.sqrt(np.abs(x))
