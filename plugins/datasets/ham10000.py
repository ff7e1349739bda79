"""`ham10000`: HAM10000 (Tschandl et al. 2018), 10015 dermoscopy images of 7470 lesions, seven diagnoses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import attach_paths, find_file
from plugins.datasets.common import checked_options, finish, in_vocabulary, map_labels, optional_path, read_csv

DESCRIPTION = "HAM10000: HAM10000_metadata.csv + <image_id>.jpg anywhere under --root; 7 diagnoses, lesion ids"
METADATA = "HAM10000_metadata.csv"
LABELS = in_vocabulary({
    "mel": "melanoma",
    "bcc": "basal_cell_carcinoma",
    "nv": "nevus",
    "bkl": "benign_keratosis",
    "akiec": "actinic_keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular",
})


@checked_options("ham10000")
def load(root: Path, metadata: str = "") -> pd.DataFrame:
    path = find_file(root, METADATA, optional_path(metadata))
    table = read_csv(path, ["lesion_id", "image_id", "dx"], "ham10000")
    diagnosis = map_labels(table["dx"], LABELS, "ham10000", path, table["image_id"])
    manifest = table.assign(diagnosis=diagnosis)[["image_id", "diagnosis", "lesion_id"]]
    return finish(attach_paths(manifest, root, "ham10000"))
