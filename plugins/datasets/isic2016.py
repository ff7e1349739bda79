"""`isic2016`: the ISBI 2016 ISIC challenge, part 3 (lesion classification), with its official 900/379 split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import attach_paths, find_file
from plugins.datasets.common import checked_options, finish, in_vocabulary, map_labels, optional_path, read_csv

DESCRIPTION = ("ISBI 2016 ISIC part 3: the Training/Test image folders and both GroundTruth CSVs; official "
               "900/379 split; benign vs melanoma only (options train_csv=, test_csv=)")
TRAIN_CSV = "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
TEST_CSV = "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
# The training file says benign/malignant, the test file 0.0/1.0; the challenge's "benign" is not one diagnosis.
LABELS = in_vocabulary({"benign": "other_benign", "malignant": "melanoma", "0": "other_benign", "1": "melanoma",
                        "0.0": "other_benign", "1.0": "melanoma"})


@checked_options("isic2016")
def load(root: Path, train_csv: str = "", test_csv: str = "") -> pd.DataFrame:
    parts = []
    for split, name, given in (("train", TRAIN_CSV, train_csv), ("test", TEST_CSV, test_csv)):
        path = find_file(root, name, optional_path(given))
        table = read_csv(path, ["image_id", "label"], "isic2016", header=None, names=["image_id", "label"])
        diagnosis = map_labels(table["label"], LABELS, "isic2016", path, table["image_id"])
        parts.append(table.assign(diagnosis=diagnosis, split=split)[["image_id", "diagnosis", "split"]])
    return finish(attach_paths(pd.concat(parts, ignore_index=True), root, "isic2016"))
