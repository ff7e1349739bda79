"""`ph2`: PH2 (Mendonça et al. 2013), 200 dermoscopy images (Pedro Hispano hospital, Tuebingen Mole Analyzer):
80 common nevi, 80 atypical nevi, 40 melanomas, one image per lesion.

`PH2_dataset.xlsx` has a legend above its table, so the header row is found by its `Image Name` cell rather than
by position; a diagnosis is the X in one of three columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.dataset import attach_paths, few, find_file
from bench.errors import BenchError
from plugins.datasets.common import checked_options, finish, optional_path

DESCRIPTION = ("PH2: PH2_dataset.xlsx + IMDnnn.bmp/.jpg anywhere under --root; nevus (atypical flagged) / "
               "melanoma, one image per lesion (option sheet=)")
SHEET = "PH2_dataset.xlsx"
ID_COLUMN = "Image Name"
# the X columns, as the sheet names them -> diagnosis; the column's own name, lower-cased, is the source_label
CLASSES = {"Common Nevus": "nevus", "Atypical Nevus": "nevus", "Melanoma": "melanoma"}


@checked_options("ph2")
def load(root: Path, sheet: str = "") -> pd.DataFrame:
    path = find_file(root, SHEET, optional_path(sheet))
    table = _table(path)
    marks = table[list(CLASSES)].apply(lambda column: column.str.strip().str.upper() == "X")
    ids = table[ID_COLUMN].str.strip()
    counts = marks.sum(axis=1)
    if (counts != 1).any():
        rows = [f"{i} ({n} X)" for i, n in zip(ids[counts != 1], counts[counts != 1])]
        raise BenchError(f"ph2: {len(rows)} row(s) of {path} need exactly one X under {', '.join(CLASSES)}: "
                         f"{few(rows)}")
    ph2_class = marks.idxmax(axis=1)
    manifest = pd.DataFrame({
        "image_id": ids,
        "diagnosis": ph2_class.map(CLASSES),
        "atypical": ph2_class == "Atypical Nevus",
        "source_label": ph2_class.str.lower(),
        "lesion_id": ids,  # one image per lesion
    })
    return finish(attach_paths(manifest, root, "ph2"))


def _table(path: Path) -> pd.DataFrame:
    """The image rows of the sheet, as strings, under the header row that starts with `Image Name`."""
    try:
        cells = pd.read_excel(path, header=None, dtype=str).fillna("")
    except (OSError, ValueError, KeyError) as exc:  # openpyxl raises these for a file that is no xlsx
        raise BenchError(f"ph2: cannot read {path}: {exc}. Check that it is the PH2_dataset.xlsx PH2 ships") from exc
    header = cells.index[cells.iloc[:, 0].str.strip() == ID_COLUMN]
    if header.empty:
        raise BenchError(f"ph2: {path} has no header row starting with {ID_COLUMN!r}: is it PH2's sheet?")
    columns = [str(c).strip() for c in cells.loc[header[0]]]
    missing = [c for c in (ID_COLUMN, *CLASSES) if c not in columns]
    if missing:
        raise BenchError(f"ph2: {path} lacks column(s) {missing}; its header row has {[c for c in columns if c]}")
    table = cells.loc[header[0] + 1:].set_axis(columns, axis=1)
    return table[table[ID_COLUMN].str.strip() != ""].reset_index(drop=True)
