"""bench/overlap.py: pictures shared by a training and a test side are found by content, under any name or size."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import digests, overlap, plugins
from bench.errors import BenchError


def drawn(folder: Path, n: int, seed: int) -> pd.DataFrame:
    """n smooth random pictures, 200x150 JPEG (the size of the shared HAM10000 copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
        path = folder / f"img{seed}_{i}.jpg"
        small.resize((200, 150), Image.BICUBIC).save(path, quality=90)
        rows.append({"image_id": path.stem, "path": str(path)})
    return pd.DataFrame(rows)


def copies(originals: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Each original renamed, and resized / re-compressed in turn: what public sets do to each other's images."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, original in enumerate(originals.itertuples()):
        image = Image.open(original.path).convert("RGB")
        w, h = image.size
        kind = k % 4
        if kind == 0:  # the same file under another name
            copy, save = image, {}
            path = folder / f"renamed_{k}.jpg"
            path.write_bytes(Path(original.path).read_bytes())
        else:
            copy = {1: image.resize((w // 4, h // 4), Image.LANCZOS), 2: image.resize((28, 28), Image.BICUBIC),
                    3: image.resize((w * 2, h * 2), Image.BICUBIC)}[kind]
            path, save = folder / f"copy_{k}.jpg", {"quality": 40 if kind != 2 else 95}
            copy.save(path, **save)
        rows.append({"image_id": path.stem, "path": str(path), "original": original.image_id})
    return pd.DataFrame(rows)


def test_copies_are_caught_under_any_name_size_and_quality_and_other_pictures_are_not(tmp_path):
    train = drawn(tmp_path / "train", 40, seed=0)
    copied = copies(train.iloc[:12], tmp_path / "copies")
    test = pd.concat([copied, drawn(tmp_path / "other", 60, seed=1)], ignore_index=True)
    found = overlap.find_overlap(train, test)
    assert sorted(found.test_ids) == sorted(copied["image_id"])
    matched = found.matches.set_index("test_id")
    assert (matched.loc[copied["image_id"], "train_id"].to_numpy() == copied["original"].to_numpy()).all()
    assert set(matched.loc[copied["image_id"][::4], "how"]) == {"digest"}  # the renamed files: same bytes
    assert (matched.query("how == 'perceptual'")["distance"] <= overlap.THRESHOLD).all()
    # a content record (what a source stage keeps) finds the same as the manifest it was made from
    assert overlap.find_overlap(overlap.content(train), test).matches.equals(found.matches)
    assert len(overlap.find_overlap(train, drawn(tmp_path / "more", 30, seed=2))) == 0


def test_the_refusal_is_one_line_naming_the_images_and_the_fix(tmp_path):
    train = drawn(tmp_path / "train", 8, seed=0)
    found = overlap.find_overlap(train, copies(train, tmp_path / "copies"))
    error = overlap.refusal(found, "ham10000", "derm")
    assert isinstance(error, BenchError) and "\n" not in str(error)
    assert str(error).startswith("8 image(s) of derm are pictures ham10000 trained on (renamed_0 = img0_0, copy_1 ~ "
                                 "img0_1 (")
    assert "--drop-overlap" in str(error) and "... and 5 more" in str(error)
    records = json.loads(json.dumps(found.to_records()))  # as a feature set's attrs keep them
    assert overlap.Overlap.from_records(records).to_records() == found.to_records()


def test_hashes_are_cached_by_content(tmp_path, monkeypatch):
    images = drawn(tmp_path / "a", 5, seed=0)
    first = overlap.content(images)
    monkeypatch.setattr(overlap, "_perceptual", lambda path: pytest.fail(f"{path} decoded again"))
    renamed = images.assign(path=[str(Path(p).rename(Path(p).with_name(f"new_{i}.jpg")))
                                  for i, p in enumerate(images["path"])])
    assert overlap.content(renamed).equals(first)  # a new path, the same bytes: the cached hash


def ham_and_ph2(shared_data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (plugins.get_dataset("ham10000").manifest(shared_data / "ham10000"),
            plugins.get_dataset("ph2").manifest(shared_data / "ph2"))


@pytest.mark.slow
def test_copies_of_ham10000_are_caught_and_ph2_is_not_a_copy(shared_data, tmp_path):
    ham, ph2 = ham_and_ph2(shared_data)
    originals = ham.sample(40, random_state=0)
    copied = copies(originals, tmp_path / "copies")
    found = overlap.find_overlap(ham, pd.concat([copied, ph2], ignore_index=True))
    assert sorted(found.test_ids) == sorted(copied["image_id"])  # every copy, and none of PH2's 200 images
    assert (found.matches.set_index("test_id").loc[copied["image_id"], "train_id"].to_numpy()
            == copied["original"].to_numpy()).all()


@pytest.mark.slow
def test_the_guard_on_ham10000_x_ph2_takes_under_a_minute_cached(shared_data):
    ham, ph2 = ham_and_ph2(shared_data)
    overlap.find_overlap(ham, ph2)  # cold: hashes every image once
    started = time.perf_counter()
    assert len(overlap.find_overlap(ham, ph2)) == 0
    assert time.perf_counter() - started < 60
    assert digests.file_digests([ph2["path"].iloc[0]])[0]  # the cache file is the digests' own
