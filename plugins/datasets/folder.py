"""`folder`: any images sorted into one folder per class, `root/<class>/*.jpg`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import DIAGNOSES, IMAGE_SUFFIXES
from bench.errors import BenchError
from plugins.datasets.common import checked_options, finish, in_vocabulary

DESCRIPTION = "Your own images: root/<class>/*.jpg, class folders named by diagnosis (mel, nevus, bcc, sk, ...)"
# Folder names are matched lower-cased with spaces and hyphens read as underscores. A folder called "benign"
# says only that the lesion is benign, so it maps to other_benign rather than to a particular diagnosis.
SPELLINGS = in_vocabulary({
    **{name: name for name in DIAGNOSES},
    "mel": "melanoma", "mm": "melanoma", "malignant": "melanoma", "melanomas": "melanoma",
    "bcc": "basal_cell_carcinoma", "basal_cell": "basal_cell_carcinoma",
    "scc": "squamous_cell_carcinoma",
    "akiec": "actinic_keratosis", "ak": "actinic_keratosis",
    "nv": "nevus", "nevi": "nevus", "naevus": "nevus", "naevi": "nevus", "mole": "nevus", "moles": "nevus",
    "sk": "seborrheic_keratosis", "seborrhoeic_keratosis": "seborrheic_keratosis",
    "bkl": "benign_keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular", "vascular_lesion": "vascular",
    "solar_lentigo": "lentigo",
    "benign": "other_benign", "other": "other_benign", "misc": "other_benign", "miscellaneous": "other_benign",
})


@checked_options("folder")
def load(root: Path) -> pd.DataFrame:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BenchError(f"folder: {root} has no class folders; put the images in root/<class>/, e.g. "
                         f"{root}/melanoma/img1.jpg and {root}/nevus/img2.jpg")
    unknown = [p.name for p in folders if _key(p.name) not in SPELLINGS]
    if unknown:
        raise BenchError(f"folder: class folder(s) {unknown} in {root} name no known diagnosis; rename them to one "
                         f"of: {', '.join(DIAGNOSES)} (or a common short form such as mel, nv, bcc, sk)")
    rows = [{"image_id": f"{folder.name}/{path.relative_to(folder).with_suffix('').as_posix()}",
             "path": str(path), "diagnosis": SPELLINGS[_key(folder.name)]}
            for folder in folders for path in sorted(folder.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not rows:
        raise BenchError(f"folder: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders under {root}")
    return finish(pd.DataFrame(rows))


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")
