"""`kaggle-dr`: Kaggle Diabetic Retinopathy (EyePACS), the paper's source task: retinopathy grade 0-4."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import attach_paths, find_file
from plugins.datasets.common import checked_options, finish, in_vocabulary, map_labels, optional_path, read_csv

DESCRIPTION = ("Kaggle Diabetic Retinopathy: trainLabels.csv (image,level) + <image>.jpeg; grades 0-4 as "
               "retinopathy_0..4, the source task (option labels=)")
LABELS_CSV = "trainLabels.csv"
LABELS = in_vocabulary({str(grade): f"retinopathy_{grade}" for grade in range(5)})


@checked_options("kaggle-dr")
def load(root: Path, labels: str = "") -> pd.DataFrame:
    path = find_file(root, LABELS_CSV, optional_path(labels))
    table = read_csv(path, ["image", "level"], "kaggle-dr")
    diagnosis = map_labels(table["level"], LABELS, "kaggle-dr", path, table["image"])
    manifest = pd.DataFrame({
        "image_id": table["image"],
        "diagnosis": diagnosis,
        "source_label": table["level"].astype(int),
        # images are `<patient>_left` / `<patient>_right`: both eyes of one patient stay on one side of a split
        "lesion_id": table["image"].str.rsplit("_", n=1).str[0],
    })
    return finish(attach_paths(manifest, root, "kaggle-dr"))
