"""The built-in dataset adapters: fixture files written here, the real data in ../shared/data where present."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench import paths, plugins
from bench.cli import app
from bench.dataset import DIAGNOSES
from bench.errors import BenchError

runner = CliRunner()


def manifest(name: str, root: Path | None = None, **options: str) -> pd.DataFrame:
    return plugins.get_dataset(name).manifest(root, **options)


def write_image(path: Path, colour: tuple[int, int, int] = (120, 80, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def digest_folder(manifest: pd.DataFrame) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in manifest["path"]]


def test_every_adapter_is_registered_and_listed():
    names = {"isic2016", "atlas", "ham10000", "kaggle-dr", "dermamnist", "ph2", "folder", "synthetic", "synthetic-fundus"}
    assert names <= set(plugins.datasets())
    result = runner.invoke(app, ["datasets"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in names)


# --- isic2016 --------------------------------------------------------------------------------------------------

@pytest.fixture
def isic_root(tmp_path: Path) -> Path:
    root = tmp_path / "isic"
    for name in ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002"):
        write_image(root / "ISBI2016_ISIC_Part3_Training_Data" / f"{name}.jpg")
    for name in ("ISIC_0000003", "ISIC_0000004"):
        write_image(root / "ISBI2016_ISIC_Part3_Test_Data" / f"{name}.jpg")
    write_text(root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv",
               "ISIC_0000000,benign\nISIC_0000001,malignant\nISIC_0000002,benign\n")
    write_text(root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv", "ISIC_0000003,0.0\nISIC_0000004,1.0\n")
    return root


def test_isic2016_official_split_and_labels(isic_root: Path):
    m = manifest("isic2016", isic_root)
    assert m["image_id"].tolist() == [f"ISIC_000000{i}" for i in range(5)]
    assert m["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert m["diagnosis"].tolist() == ["other_benign", "melanoma", "other_benign", "other_benign", "melanoma"]
    assert Path(m.loc[4, "path"]).parent.name == "ISBI2016_ISIC_Part3_Test_Data"


def test_isic2016_unknown_label_names_the_row(isic_root: Path):
    write_text(isic_root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv", "ISIC_0000003,0.0\nISIC_0000004,maybe\n")
    with pytest.raises(BenchError, match=r"ISIC_0000004 'maybe'"):
        manifest("isic2016", isic_root)


def test_isic2016_missing_csv_says_where_to_put_it(isic_root: Path):
    (isic_root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").unlink()
    with pytest.raises(BenchError, match="ISBI2016_ISIC_Part3_Test_GroundTruth.csv not found"):
        manifest("isic2016", isic_root)


def test_isic2016_explicit_csv_path(isic_root: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere.csv"
    (isic_root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").rename(moved)
    assert len(manifest("isic2016", isic_root, test_csv=str(moved))) == 5


# --- atlas -----------------------------------------------------------------------------------------------------

DERM7PT_DIAGNOSES = {  # every diagnosis string of derm7pt's meta.csv, and what it must become
    "basal cell carcinoma": "basal_cell_carcinoma", "blue nevus": "nevus", "clark nevus": "nevus",
    "combined nevus": "nevus", "congenital nevus": "nevus", "dermal nevus": "nevus", "dermatofibroma":
    "dermatofibroma", "lentigo": "lentigo", "melanoma": "melanoma", "melanoma (in situ)": "melanoma",
    "melanoma (less than 0.76 mm)": "melanoma", "melanoma (0.76 to 1.5 mm)": "melanoma",
    "melanoma (more than 1.5 mm)": "melanoma", "melanoma metastasis": "melanoma", "melanosis": "melanosis",
    "miscellaneous": "other_benign", "recurrent nevus": "nevus", "reed or spitz nevus": "nevus",
    "seborrheic keratosis": "seborrheic_keratosis", "vascular lesion": "vascular",
}
ATLAS_HEADER = ("case_num,diagnosis,seven_point_score,pigment_network,streaks,pigmentation,regression_structures,"
                "dots_and_globules,blue_whitish_veil,vascular_structures,level_of_diagnostic_difficulty,elevation,"
                "location,sex,management,clinic,derm,case_id,notes")


def write_atlas(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows of (diagnosis, difficulty, location); case i has clinical image NEL/Nel{2i}.jpg, dermoscopic {2i+1}."""
    lines = [ATLAS_HEADER]
    for i, (diagnosis, difficulty, location) in enumerate(rows, start=1):
        clinic, derm = f"NEL/NEL{2 * i:03d}.JPG", f"NEL/Nel{2 * i + 1:03d}.jpg"
        write_image(root / "images" / clinic)
        write_image(root / "images" / derm)
        lines.append(f'{i},"{diagnosis}",0,absent,absent,absent,absent,absent,absent,absent,{difficulty},flat,'
                     f"{location},female,excision,{clinic},{derm},{i + 100},")
    write_text(root / "meta" / "meta.csv", "\n".join(lines) + "\n")
    return root


def test_atlas_maps_every_derm7pt_diagnosis(tmp_path: Path):
    difficulties = ["low", "medium", "high"]
    rows = [(d, difficulties[i % 3], "back") for i, d in enumerate(DERM7PT_DIAGNOSES)]
    m = manifest("atlas", write_atlas(tmp_path / "atlas", rows))
    assert m["diagnosis"].tolist() == list(DERM7PT_DIAGNOSES.values())
    assert m["difficulty"].tolist() == [difficulties[i % 3] for i in range(len(rows))]
    assert m["lesion_id"].tolist() == [str(i) for i in range(1, len(rows) + 1)]
    # the dermoscopic image, not the clinical one; ids are the lower-cased stems the reference folds use
    assert m.loc[0, "image_id"] == "nel003" and m.loc[0, "path"].endswith("Nel003.jpg")


def test_atlas_excludes_acral_unless_asked(tmp_path: Path):
    root = write_atlas(tmp_path / "atlas", [("melanoma (in situ)", "high", "acral"), ("clark nevus", "low", "back"),
                                            ("melanoma", "medium", "acral")])
    assert manifest("atlas", root)["lesion_id"].tolist() == ["2"]
    assert manifest("atlas", root, keep_acral="true")["lesion_id"].tolist() == ["1", "2", "3"]
    with pytest.raises(BenchError, match="keep_acral"):
        manifest("atlas", root, keep_acral="perhaps")


@pytest.mark.parametrize(("rows", "message"), [
    ([("clark nevus", "low", "back"), ("pink elephant", "low", "back")], r"nel005 'pink elephant'"),
    ([("clark nevus", "impossible", "back")], r"level_of_diagnostic_difficulty.*nel003 'impossible'"),
])
def test_atlas_bad_rows_are_listed(tmp_path: Path, rows, message):
    with pytest.raises(BenchError, match=message):
        manifest("atlas", write_atlas(tmp_path / "atlas", rows))


def test_atlas_missing_column_is_named(tmp_path: Path):
    root = write_atlas(tmp_path / "atlas", [("clark nevus", "low", "back")])
    meta = root / "meta" / "meta.csv"
    meta.write_text(meta.read_text().replace("level_of_diagnostic_difficulty", "difficulty"))
    with pytest.raises(BenchError, match=r"lacks column\(s\) \['level_of_diagnostic_difficulty'\]"):
        manifest("atlas", root)


# --- ham10000 --------------------------------------------------------------------------------------------------

HAM_ROWS = [("HAM_1", "ISIC_01", "mel"), ("HAM_1", "ISIC_02", "mel"), ("HAM_2", "ISIC_03", "bcc"),
            ("HAM_3", "ISIC_04", "nv"), ("HAM_4", "ISIC_05", "bkl"), ("HAM_5", "ISIC_06", "akiec"),
            ("HAM_6", "ISIC_07", "df"), ("HAM_7", "ISIC_08", "vasc")]


@pytest.fixture
def ham_root(tmp_path: Path) -> Path:
    root = tmp_path / "ham"
    for i, (_, image_id, _) in enumerate(HAM_ROWS):  # the official release spreads them over two folders
        write_image(root / f"HAM10000_images_part_{1 + i % 2}" / f"{image_id}.jpg")
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    lines += [f"{lesion},{image},{dx},histo,50.0,male,back" for lesion, image, dx in HAM_ROWS]
    write_text(root / "HAM10000_metadata.csv", "\n".join(lines) + "\n")
    return root


def test_ham10000_diagnoses_and_lesions(ham_root: Path):
    m = manifest("ham10000", ham_root)
    assert m["diagnosis"].tolist() == ["melanoma", "melanoma", "basal_cell_carcinoma", "nevus", "benign_keratosis",
                                       "actinic_keratosis", "dermatofibroma", "vascular"]
    assert m["lesion_id"].tolist() == [lesion for lesion, _, _ in HAM_ROWS]


def test_ham10000_lists_every_missing_image(ham_root: Path):
    for image_id in ("ISIC_03", "ISIC_06"):
        next(ham_root.rglob(f"{image_id}.jpg")).unlink()
    with pytest.raises(BenchError, match=r"2 image\(s\) listed but not found .*ISIC_03, ISIC_06"):
        manifest("ham10000", ham_root)


def test_ham10000_unreadable_csv(ham_root: Path):
    (ham_root / "HAM10000_metadata.csv").write_bytes(b"")
    with pytest.raises(BenchError, match="cannot read .*HAM10000_metadata.csv"):
        manifest("ham10000", ham_root)


# --- kaggle-dr -------------------------------------------------------------------------------------------------

def write_kaggle(root: Path, levels: dict[str, str]) -> Path:
    for image in levels:
        write_image(root / "train" / f"{image}.jpeg")
    write_text(root / "trainLabels.csv", "image,level\n" + "".join(f"{i},{v}\n" for i, v in levels.items()))
    return root


def test_kaggle_dr_grades(tmp_path: Path):
    levels = {"10_left": "0", "10_right": "2", "13_left": "4", "15_right": "1", "16_left": "3"}
    m = manifest("kaggle-dr", write_kaggle(tmp_path / "dr", levels))
    assert m["diagnosis"].tolist() == [f"retinopathy_{v}" for v in levels.values()]
    assert m["source_label"].tolist() == [int(v) for v in levels.values()]
    assert m["lesion_id"].tolist() == ["10", "10", "13", "15", "16"]  # a patient's two eyes stay together


def test_kaggle_dr_bad_grade(tmp_path: Path):
    with pytest.raises(BenchError, match=r"13_left '5'"):
        manifest("kaggle-dr", write_kaggle(tmp_path / "dr", {"10_left": "0", "13_left": "5"}))


# --- dermamnist ------------------------------------------------------------------------------------------------

def write_npz(path: Path, counts=(6, 2, 3), size: int = 28, drop: str = "", **override: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in zip(("train", "val", "test"), counts):
        arrays[f"{part}_images"] = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 7).reshape(-1, 1)
    arrays.update(override)
    arrays.pop(drop, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_dermamnist_from_an_npz(tmp_path: Path):
    npz = write_npz(tmp_path / "mnist" / "dermamnist.npz")
    m = manifest("dermamnist", tmp_path / "mnist")
    assert len(m) == 11
    assert m.groupby("split").size().to_dict() == {"test": 3, "train": 8}  # val merged into train
    assert m.loc[m["image_id"] == "val_00001", "split"].item() == "train"
    assert m.loc[m["image_id"] == "train_00004", "diagnosis"].item() == "melanoma"  # MedMNIST label 4
    written = np.asarray(Image.open(m.loc[m["image_id"] == "test_00002", "path"].item()))
    assert np.array_equal(written, np.load(npz)["test_images"][2])
    assert Path(m.loc[0, "path"]).is_relative_to(paths.datasets_dir(paths.home()))


def test_dermamnist_other_size_and_explicit_path(tmp_path: Path):
    npz = write_npz(tmp_path / "any-name.npz", size=64)
    m = manifest("dermamnist", None, npz=str(npz), size="64")
    assert Image.open(m.loc[0, "path"]).size == (64, 64)
    with pytest.raises(BenchError, match="size=100"):
        manifest("dermamnist", None, npz=str(npz), size="100")


def test_dermamnist_label_outside_the_seven_classes(tmp_path: Path):
    write_npz(tmp_path / "dermamnist.npz", test_labels=np.array([[0], [9], [1]]))
    with pytest.raises(BenchError, match=r"test has .* labels outside 0-6: \[9\]"):
        manifest("dermamnist", tmp_path)


def test_dermamnist_npz_missing_an_array(tmp_path: Path):
    write_npz(tmp_path / "dermamnist.npz", drop="val_images")
    with pytest.raises(BenchError, match=r"lacks array\(s\) \['val_images'\]"):
        manifest("dermamnist", tmp_path)


def test_dermamnist_npz_that_is_not_one(tmp_path: Path):
    write_text(tmp_path / "dermamnist.npz", "not a zip")
    with pytest.raises(BenchError, match="cannot read .*dermamnist.npz"):
        manifest("dermamnist", tmp_path)


def test_dermamnist_without_npz_or_medmnist_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # makes `import medmnist` fail
    with pytest.raises(BenchError, match=r"pip install bench\[medmnist\].*--root"):
        manifest("dermamnist")


def test_dermamnist_downloads_through_medmnist_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "fresh-home"))
    calls = []

    class DermaMNIST:  # medmnist's class, whose constructor downloads `dermamnist[_size].npz` into root
        def __init__(self, split: str, download: bool, root: str, size: int):
            calls.append((split, download, size))
            write_npz(Path(root) / "dermamnist_64.npz", counts=(2, 1, 1), size=size)

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(DermaMNIST=DermaMNIST))
    assert len(manifest("dermamnist", size="64")) == 4
    assert len(manifest("dermamnist", size="64")) == 4
    assert calls == [("train", True, 64)]


def test_dermamnist_failed_download_is_one_error(monkeypatch: pytest.MonkeyPatch):
    class DermaMNIST:
        def __init__(self, **_: object):
            raise OSError("network unreachable")

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(DermaMNIST=DermaMNIST))
    with pytest.raises(BenchError, match="could not download dermamnist.npz.*network unreachable"):
        manifest("dermamnist")


# --- folder ----------------------------------------------------------------------------------------------------

def test_folder_maps_common_spellings(tmp_path: Path):
    write_image(tmp_path / "mel" / "a.jpg")
    write_image(tmp_path / "Nevus" / "a.png")
    write_image(tmp_path / "basal-cell-carcinoma" / "deeper" / "b.JPG")
    write_image(tmp_path / "benign" / "c.jpeg")
    write_text(tmp_path / "README.txt", "not a class")
    m = manifest("folder", tmp_path)
    assert dict(zip(m["image_id"], m["diagnosis"])) == {
        "mel/a": "melanoma", "Nevus/a": "nevus", "basal-cell-carcinoma/deeper/b": "basal_cell_carcinoma",
        "benign/c": "other_benign"}


def test_folder_unknown_classes_are_listed_with_the_vocabulary(tmp_path: Path):
    for name in ("mel", "spots", "weird"):
        write_image(tmp_path / name / "a.jpg")
    with pytest.raises(BenchError, match=r"\['spots', 'weird'\].*basal_cell_carcinoma"):
        manifest("folder", tmp_path)


# --- synthetic -------------------------------------------------------------------------------------------------

def test_synthetic_is_seeded_cached_and_deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "a"))
    first = manifest("synthetic", n="40", size="48", seed="3")
    assert all(Path(p).is_relative_to(tmp_path / "a") for p in first["path"])
    stamps = [Path(p).stat().st_mtime_ns for p in first["path"]]
    pd.testing.assert_frame_equal(manifest("synthetic", n="40", size="48", seed="3"), first)
    assert [Path(p).stat().st_mtime_ns for p in first["path"]] == stamps  # reused, not drawn again
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "b"))
    again = manifest("synthetic", n="40", size="48", seed="3")
    assert digest_folder(again) == digest_folder(first)
    assert again.drop(columns="path").equals(first.drop(columns="path"))
    other = manifest("synthetic", n="40", size="48", seed="4")
    assert digest_folder(other) != digest_folder(first)


@pytest.mark.slow
def test_synthetic_classes_lesions_split_and_difficulty():
    m = manifest("synthetic")
    assert len(m) == 240 and m["image_id"].is_monotonic_increasing
    counts = m["diagnosis"].value_counts().to_dict()
    assert counts == {"nevus": 84, "melanoma": 72, "seborrheic_keratosis": 48, "basal_cell_carcinoma": 36}
    assert set(m["difficulty"]) == {"low", "medium", "high"}
    images_per_lesion = m.groupby("lesion_id").size()
    assert set(images_per_lesion) == {1, 2} and (images_per_lesion == 2).sum() >= 10
    assert m.groupby("lesion_id")["split"].nunique().max() == 1  # grouped by lesion
    test_share = m.groupby("diagnosis")["split"].apply(lambda s: (s == "test").mean())
    assert test_share.between(0.25, 0.35).all()
    image = Image.open(m.loc[0, "path"])
    assert image.size == (128, 128) and image.mode == "RGB"


def test_synthetic_difficulty_tracks_how_typical_the_drawing_is():
    """Typical (low-difficulty) melanomas are darker and more varied in colour than typical nevi; the gap shrinks
    for high-difficulty ones, which is what makes the class signal real but imperfect."""
    m = manifest("synthetic")

    def contrast(rows: pd.DataFrame) -> float:
        """Mean darkness of the darkest tenth of pixels: dark, multi-coloured lesions score high."""
        return float(np.mean([np.percentile(255 - np.asarray(Image.open(p).convert("L")), 90) for p in rows["path"]]))

    gap = {level: contrast(m[(m["diagnosis"] == "melanoma") & (m["difficulty"] == level)])
           - contrast(m[(m["diagnosis"] == "nevus") & (m["difficulty"] == level)]) for level in ("low", "high")}
    assert gap["low"] > 20 and gap["high"] < gap["low"] / 2


def test_synthetic_bad_option():
    with pytest.raises(BenchError, match="n=3 must be at least 20"):
        manifest("synthetic", n="3")
    with pytest.raises(BenchError, match=r"unknown option\(s\) \['colour'\]; it takes: n, size, seed"):
        manifest("synthetic", colour="red")


def test_an_option_of_the_wrong_type_names_the_adapter_and_the_option(tmp_path):
    with pytest.raises(BenchError, match="atlas: option keep_acral=maybe must be true or false"):
        plugins.get_dataset("atlas").manifest(tmp_path, keep_acral="maybe")
    with pytest.raises(BenchError, match="synthetic: option size=big must be a whole number"):
        manifest("synthetic", size="big")


def test_synthetic_fundus_grades():
    m = manifest("synthetic-fundus", n="40", size="64")
    assert m["diagnosis"].value_counts().to_dict() == {"retinopathy_0": 12, "retinopathy_2": 10, "retinopathy_1": 8,
                                                       "retinopathy_3": 6, "retinopathy_4": 4}
    assert (m["diagnosis"] == "retinopathy_" + m["source_label"].astype(str)).all()
    assert set(m["diagnosis"]) <= set(DIAGNOSES)


def test_cli_show_counts_and_options():
    result = runner.invoke(app, ["datasets", "show", "synthetic", "--option", "n=40", "--option", "size=48"])
    assert result.exit_code == 0, result.output
    assert "40 images" in result.output and "melanoma" in result.output and "lesions" in result.output
    result = runner.invoke(app, ["datasets", "show", "synthetic", "--option", "seed=-1"])
    assert isinstance(result.exception, BenchError) and "seed=-1" in str(result.exception)


# --- ph2 ----------------------------------------------------------------------------------------------------------

def write_ph2(root: Path, rows: list[tuple[str, str]], suffix: str = ".bmp") -> Path:
    """PH2's layout: a legend above the table, one X per row, images in IMDnnn/IMDnnn_Dermoscopic_Image/."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append([None, None, None, None, None, "Legends"])
    sheet.append([None, None, None, None, None, "Asymmetry", 0, "Fully Simmetric"])
    sheet.append([])
    sheet.append(["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma", "Asymmetry"])
    for name, which in rows:
        sheet.append([name, None, *("X" if which == c else None for c in ("common", "atypical", "melanoma")), 0])
        write_image(root / "PH2 Dataset images" / name / f"{name}_Dermoscopic_Image" / f"{name}{suffix}")
    root.mkdir(parents=True, exist_ok=True)
    book.save(root / "PH2_dataset.xlsx")
    return root


@pytest.mark.parametrize("suffix", [".bmp", ".jpg"])
def test_ph2_classes_atypical_flag_and_lesions(tmp_path: Path, suffix: str):
    root = write_ph2(tmp_path / "ph2", [("IMD003", "common"), ("IMD002", "atypical"), ("IMD058", "melanoma")], suffix)
    m = manifest("ph2", root)
    assert m["image_id"].tolist() == ["IMD002", "IMD003", "IMD058"]
    assert m["diagnosis"].tolist() == ["nevus", "nevus", "melanoma"]
    assert m["atypical"].tolist() == [True, False, False]
    assert m["lesion_id"].tolist() == m["image_id"].tolist()
    assert all(p.endswith(suffix) for p in m["path"])


def test_ph2_row_without_exactly_one_x_is_named(tmp_path: Path):
    root = write_ph2(tmp_path / "ph2", [("IMD003", "common"), ("IMD004", "none")])
    with pytest.raises(BenchError, match=r"IMD004 \(0 X\)"):
        manifest("ph2", root)


def test_ph2_sheet_that_is_not_an_xlsx(tmp_path: Path):
    root = write_ph2(tmp_path / "ph2", [("IMD003", "common")])
    write_text(root / "PH2_dataset.xlsx", "image,label\n")
    with pytest.raises(BenchError, match="cannot read .*PH2_dataset.xlsx"):
        manifest("ph2", root)


def test_ph2_missing_image_is_listed(tmp_path: Path):
    root = write_ph2(tmp_path / "ph2", [("IMD003", "common"), ("IMD004", "melanoma")])
    next(root.rglob("IMD004.bmp")).unlink()
    with pytest.raises(BenchError, match="IMD004"):
        manifest("ph2", root)


# --- the real data -----------------------------------------------------------------------------------------------

def show(name: str, root: Path) -> str:
    result = runner.invoke(app, ["datasets", "show", name, "--root", str(root)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def table_counts(output: str) -> dict[str, int]:
    """The `value | count` rows of the rich tables `bench datasets show` prints."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.count("│") == 3]
    return {value: int(count) for value, count in cells if count.isdigit()}


@pytest.mark.slow
def test_real_ham10000(shared_data: Path):
    output = show("ham10000", shared_data / "ham10000")
    assert table_counts(output) == {"nevus": 6705, "melanoma": 1113, "benign_keratosis": 1099,
                                    "basal_cell_carcinoma": 514, "actinic_keratosis": 327, "vascular": 142,
                                    "dermatofibroma": 115}
    assert "10015 images" in output and "7470 lesions" in output


@pytest.mark.slow
def test_real_kaggle_dr(shared_data: Path):
    counts = table_counts(show("kaggle-dr", shared_data / "kaggle-dr"))
    assert [counts[f"retinopathy_{g}"] for g in range(5)] == [671, 477, 1045, 173, 134]


@pytest.mark.slow
def test_real_ph2(shared_data: Path):
    counts = table_counts(show("ph2", shared_data / "ph2"))
    assert {k: counts[k] for k in ("common nevus", "atypical nevus", "melanoma", "nevus")} == {
        "common nevus": 80, "atypical nevus": 80, "melanoma": 40, "nevus": 160}
