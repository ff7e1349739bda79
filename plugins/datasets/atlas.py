"""`atlas`: the Interactive Atlas of Dermoscopy as released by derm7pt (`meta/meta.csv` + `images/`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import attach_paths, find_file, few
from bench.errors import BenchError
from plugins.datasets.common import checked_options, finish, in_vocabulary, map_labels, optional_path, read_csv

DESCRIPTION = ("Interactive Atlas of Dermoscopy (derm7pt release): meta/meta.csv + images/; dermoscopic images "
               "only, acral lesions excluded as in the paper (options keep_acral=true, meta=)")
META = "meta.csv"
COLUMNS = ["case_num", "diagnosis", "level_of_diagnostic_difficulty", "location", "derm"]
DIFFICULTIES = ("low", "medium", "high")
NEVI = ("nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
        "recurrent nevus", "reed or spitz nevus")
MELANOMAS = ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
             "melanoma (more than 1.5 mm)", "melanoma metastasis")
LABELS = in_vocabulary({
    **{name: "nevus" for name in NEVI},
    **{name: "melanoma" for name in MELANOMAS},
    "basal cell carcinoma": "basal_cell_carcinoma",
    "seborrheic keratosis": "seborrheic_keratosis",
    "dermatofibroma": "dermatofibroma",
    "lentigo": "lentigo",
    "melanosis": "melanosis",
    "vascular lesion": "vascular",
    "miscellaneous": "other_benign",
})


@checked_options("atlas")
def load(root: Path, keep_acral: bool = False, meta: str = "") -> pd.DataFrame:
    path = find_file(root, META, optional_path(meta))
    table = read_csv(path, COLUMNS, "atlas")
    if not keep_acral:
        table = table[table["location"].str.lower() != "acral"]
    # image ids are the lower-cased file stems, the names the paper's reference fold files use (e.g. `aal002`)
    image_id = table["derm"].map(lambda derm: Path(derm).stem.lower())
    diagnosis = map_labels(table["diagnosis"], LABELS, "atlas", path, image_id)
    difficulty = table["level_of_diagnostic_difficulty"].str.lower()
    odd = ~difficulty.isin(DIFFICULTIES)
    if odd.any():
        rows = [f"{i} {v!r}" for i, v in zip(image_id[odd], table["level_of_diagnostic_difficulty"][odd])]
        raise BenchError(f"atlas: {len(rows)} row(s) of {path} have a level_of_diagnostic_difficulty other than "
                         f"{'/'.join(DIFFICULTIES)}: {few(rows)}")
    manifest = pd.DataFrame({"image_id": image_id, "diagnosis": diagnosis, "difficulty": difficulty,
                             "lesion_id": table["case_num"]})
    return finish(attach_paths(manifest, root, "atlas"))
