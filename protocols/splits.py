"""Train/test splits, made on the FULL manifest so every protocol and every fine-tune sees the same folds.

- `5x2`: 5 repetitions of stratified (by diagnosis), lesion-grouped 2-fold CV; key `r{rep}f{f}`, fold f tests on
  group f and trains on the other. Each repetition draws from its own child of `SeedSequence(seed)`, so no two
  seeds share a partition (with `seed + rep`, seed 1's r0 was seed 0's r1).
- `official`: the manifest's own `split` column (train/test); key `official`.
- `reference`: the paper's fold files (learningtitans/melanoma-transfer `folds/*.yml`). Each `Fold_k` there is a
  pair of halves; one is trained on and the other tested, and vice versa, so `Fold_k` gives keys `ref{k}x1`
  (train on the first list) and `ref{k}x2` (train on the second), the reference's own `--fold kxj` naming. In the
  published files every even `Fold_2m` is `Fold_2m-1` with its halves swapped, so the reference runs of Fold_1..5
  covered only 3 distinct partitions; we report this and keep the distinct partitions unless asked otherwise.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.utils import check_random_state

from protocols.errors import ProtocolError

SPLITS = ("5x2", "official", "reference")
REPETITIONS = 5
# the reference implementation's file per design; `isic.yml` is the ISIC 2016 official split in the same format
REFERENCE_FILES = {"mal-vs-ben": "protocol1.yml", "mela-vs-ben": "protocol2.yml", "mela-vs-carc-vs-ben": "protocol3.yml"}
ISIC_FILE = "isic.yml"

Folds = dict[str, tuple[np.ndarray, np.ndarray]]


class ReferenceFoldsWarning(UserWarning):
    """Something in the reference fold files the user should know: repeated partitions, unknown images."""


def make_folds(
    manifest: pd.DataFrame,
    split: str,
    *,
    seed: int = 0,
    reference_dir: Path | None = None,
    protocol: str | None = None,
    keep_duplicates: bool = False,
) -> Folds:
    """Fold key -> (train image_ids, test image_ids)."""
    if split == "5x2":
        return five_by_two(manifest, seed)
    if split == "official":
        return official(manifest)
    if split == "reference":
        if reference_dir is None:
            raise ProtocolError("--split reference needs --reference-dir PATH (the folder of the paper's fold "
                                "files, protocol1.yml ... isic.yml, or one .yml file)")
        return reference(manifest, Path(reference_dir), protocol, keep_duplicates=keep_duplicates)
    raise ProtocolError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")


def select_folds(folds: Folds, names: tuple[str, ...] | list[str], split: str) -> Folds:
    """Only the folds named (in that order); no names: all of them."""
    unknown = [name for name in names if name not in folds]
    if unknown:
        raise ProtocolError(f"no fold {', '.join(unknown)} in split {split!r}; its folds are {', '.join(folds)}")
    return {name: folds[name] for name in names} if names else folds


def groups_of(manifest: pd.DataFrame) -> pd.Series:
    """The unit that must not straddle train and test: the lesion where known, else the image itself."""
    if "lesion_id" not in manifest:
        return manifest["image_id"].astype(str)
    return manifest["lesion_id"].fillna(manifest["image_id"]).astype(str)


def lesion_note(manifest: pd.DataFrame, dataset: str) -> str | None:
    """What to say wherever lesion grouping is claimed, for a dataset that records no lesion ids (DermaMNIST)."""
    if "lesion_id" in manifest and manifest["lesion_id"].notna().any():
        return None
    return (f"{dataset} records no lesion ids: every image counts as its own lesion, so the folds, the choice of C "
            "and the bootstrap cannot keep the images of one lesion together (they may straddle train and test)")


def five_by_two(manifest: pd.DataFrame, seed: int = 0) -> Folds:
    ids = manifest["image_id"].to_numpy()
    diagnosis = manifest["diagnosis"].to_numpy()
    groups = groups_of(manifest).to_numpy()
    folds: Folds = {}
    for rep, child in enumerate(np.random.SeedSequence(seed).spawn(REPETITIONS)):
        for f, test in enumerate(stratified_group_folds(diagnosis, groups, 2, int(child.generate_state(1)[0]))):
            folds[f"r{rep}f{f}"] = (ids[~test], ids[test])
    return folds


def stratified_group_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Boolean test masks, one per fold: exactly the folds of scikit-learn's `StratifiedGroupKFold(n_splits,
    shuffle=True, random_state=seed)` (same shuffle, same greedy placement, same tie-breaks), with each group's
    choice of fold computed for all folds at once. scikit-learn's loop took 0.75 s for one HAM10000 training fold,
    and an evaluation makes 100 of them. A group goes to the fold whose class proportions, with the group added,
    spread least (mean over classes of the std over folds); near-ties go to the fold with fewer images."""
    _, label_of, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    _, group_of, group_sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if n_splits > len(group_sizes):
        raise ProtocolError(f"cannot make {n_splits} lesion-grouped folds from {len(group_sizes)} lesions")
    per_group = np.zeros((len(group_sizes), len(class_sizes)))
    np.add.at(per_group, (group_of, label_of), 1)
    order = np.arange(len(group_sizes))
    check_random_state(seed).shuffle(order)
    per_group = per_group[order]
    shuffled_group = np.empty_like(order)
    shuffled_group[order] = np.arange(len(order))
    per_fold = np.zeros((n_splits, len(class_sizes)))
    fold_of = np.empty(len(order), int)
    added = np.eye(n_splits)[:, :, None]  # candidate k adds the group to fold k only
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        spread = np.std((per_fold + added * per_group[g]) / class_sizes, axis=1).mean(axis=1)
        fold_of[g] = _best_fold(spread.tolist(), per_fold.sum(axis=1).tolist())
        per_fold[fold_of[g]] += per_group[g]
    test_fold = fold_of[shuffled_group[group_of]]
    return [test_fold == k for k in range(n_splits)]


def _best_fold(spread: list[float], sizes: list[float]) -> int:
    """scikit-learn's rule: the least spread, a near-tie (`np.isclose`) going to the fold with fewer images."""
    best, best_spread, best_size = 0, spread[0], sizes[0]
    for k in range(1, len(spread)):
        near = abs(spread[k] - best_spread) <= 1e-8 + 1e-5 * abs(best_spread)
        if spread[k] < best_spread or (near and sizes[k] < best_size):
            best, best_spread, best_size = k, spread[k], sizes[k]
    return best


def fold_record(protocol: str, split: str, seed: int, fold: str, trained_on: list[str]) -> dict:
    """What a fine-tune saw, to be carried by its checkpoint and every feature set made from it."""
    ids = sorted(map(str, trained_on))
    return {"protocol": protocol, "split": split, "seed": seed, "fold": fold, "train_ids": ids,
            "train_ids_sha256": _ids_sha256(ids)}


def fold_record_problems(record: dict | None, *, protocol: str, split: str, seed: int, fold: str,
                         train_ids: np.ndarray, test_ids: np.ndarray) -> list[str]:
    """Why a fine-tune with `record` may not be scored on this fold (empty: it may): it must have been trained for
    this design, split, seed and fold, on images of the fold's training part only."""
    if not record:
        return ["it carries no record of the fold it was trained on (made before bench kept one)"]
    problems = [f"it was trained for {name} {record.get(name)!r}, this is {name} {wanted!r}"
                for name, wanted in (("protocol", protocol), ("split", split), ("fold", fold),
                                     *((("seed", seed),) if split == "5x2" else ()))
                if record.get(name) != wanted]
    ids = record.get("train_ids") or []
    if _ids_sha256(ids) != record.get("train_ids_sha256"):
        problems.append("its list of training images does not match the hash recorded with it")
    seen = set(ids)
    leaked = len(seen & set(map(str, test_ids)))
    if leaked:
        problems.append(f"{leaked} of the images it trained on are in this fold's test part")
    outside = len(seen - set(map(str, train_ids)) - set(map(str, test_ids)))
    if outside:
        problems.append(f"{outside} of the images it trained on are not in this fold at all")
    return problems


def _ids_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def official(manifest: pd.DataFrame) -> Folds:
    if "split" not in manifest or manifest["split"].isna().all():
        raise ProtocolError("this dataset has no official train/test split; use --split 5x2")
    split = manifest["split"]
    ids = manifest["image_id"].to_numpy()
    train, test = ids[(split == "train").to_numpy()], ids[(split == "test").to_numpy()]
    if len(train) == 0 or len(test) == 0:
        raise ProtocolError("the dataset's official split lacks a train or a test part; use --split 5x2")
    return {"official": (train, test)}


def reference(manifest: pd.DataFrame, path: Path, protocol: str | None = None, *,
              keep_duplicates: bool = False) -> Folds:
    """Folds from a reference .yml file, or from the one in folder `path` that lists this manifest's images."""
    file = path if path.is_file() else _pick_reference_file(manifest, path, protocol)
    partitions = read_reference_yaml(file)
    distinct = _distinct(partitions, file)
    used = partitions if keep_duplicates else {k: partitions[k] for k in distinct}
    by_name = _names_to_ids(manifest)
    _warn_unknown(file, {n for halves in used.values() for half in halves for n in half} - by_name.keys())
    folds: Folds = {}
    for fold, halves in used.items():
        number = fold.removeprefix("Fold_")
        first, second = (np.array([by_name[n] for n in half if n in by_name]) for half in halves)
        if len(first) == 0 or len(second) == 0:
            raise ProtocolError(f"{file}: {fold} has a half with none of this dataset's images; "
                                "is it the fold file of another dataset?")
        folds[f"ref{number}x1"] = (first, second)
        folds[f"ref{number}x2"] = (second, first)
    return folds


def read_reference_yaml(file: Path) -> dict[str, tuple[list[str], list[str]]]:
    """`Fold_k: [[names...], [names...]]` -> {Fold_k: (stems, stems)}, names lower-cased without extension."""
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProtocolError(f"cannot read reference fold file {file}: {exc}") from exc
    expected = "a mapping Fold_1, Fold_2, ... each holding two lists of image names"
    if not isinstance(raw, dict) or not raw:
        raise ProtocolError(f"{file}: expected {expected}")
    partitions = {}
    for fold, halves in raw.items():
        if not (isinstance(halves, list) and len(halves) == 2 and all(isinstance(h, list) for h in halves)):
            raise ProtocolError(f"{file}: {fold} is not a pair of image-name lists; expected {expected}")
        first, second = ([Path(str(n)).stem.lower() for n in half] for half in halves)
        overlap = set(first) & set(second)
        if overlap:
            raise ProtocolError(f"{file}: {fold} puts {len(overlap)} image(s) in both halves: {_few(sorted(overlap))}")
        partitions[str(fold)] = (first, second)
    return partitions


def _distinct(partitions: dict[str, tuple[list[str], list[str]]], file: Path) -> list[str]:
    """Folds whose partition (the unordered pair of halves) was not seen earlier; warn naming each repeat."""
    seen: dict[frozenset, str] = {}
    repeats = []
    for fold, (first, second) in partitions.items():
        partition = frozenset({frozenset(first), frozenset(second)})
        if partition in seen:
            repeats.append(f"{fold} repeats {seen[partition]}")
        else:
            seen[partition] = fold
    if repeats:
        warnings.warn(
            f"{file.name}: {'; '.join(repeats)} (same halves, train and test swapped). Each fold is already run in "
            f"both directions, so only the {len(seen)} distinct partition(s) {', '.join(seen.values())} are used "
            "(keep_duplicates to run them all).",
            ReferenceFoldsWarning,
            stacklevel=3,
        )
    return list(seen.values())


def _pick_reference_file(manifest: pd.DataFrame, folder: Path, protocol: str | None) -> Path:
    """The design's Atlas file or `isic.yml`, whichever lists more of this manifest's images."""
    if not folder.is_dir():
        raise ProtocolError(f"--reference-dir {folder} is neither a folder nor a .yml fold file")
    if protocol is not None and protocol not in REFERENCE_FILES:
        raise ProtocolError(f"no reference fold file for protocol {protocol!r}; known: {', '.join(REFERENCE_FILES)}")
    candidates = [folder / REFERENCE_FILES[protocol or "mal-vs-ben"], folder / ISIC_FILE]
    present = [c for c in candidates if c.is_file()]
    if not present:
        raise ProtocolError(f"{folder} holds none of {', '.join(c.name for c in candidates)}")
    names = _names_to_ids(manifest).keys()
    overlap = {c: len(names & {n for h in read_reference_yaml(c).values() for half in h for n in half})
               for c in present}
    best = max(overlap, key=overlap.get)
    if overlap[best] == 0:
        raise ProtocolError(f"none of this dataset's images appear in {', '.join(c.name for c in present)} "
                            f"under {folder}: the reference folds are for the Atlas and ISIC 2016")
    return best


def _names_to_ids(manifest: pd.DataFrame) -> dict[str, str]:
    """Lower-cased image id and file stem -> image_id, as the fold files name images by lower-cased stem."""
    ids = manifest["image_id"].astype(str)
    by_name = dict(zip(ids.str.lower(), ids))
    if "path" in manifest:
        by_name |= dict(zip((Path(p).stem.lower() for p in manifest["path"]), ids))
    return by_name


def _warn_unknown(file: Path, unknown: set[str]) -> None:
    if unknown:
        warnings.warn(f"{file.name}: {len(unknown)} image(s) in the fold file are not in this dataset and are "
                      f"skipped: {_few(sorted(unknown))}", ReferenceFoldsWarning, stacklevel=3)


def _few(items: list, n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f" ... and {len(items) - n} more" if len(items) > n else "")
