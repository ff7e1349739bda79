"""Label designs: which manifest rows a protocol keeps and the integer class each one gets.

Label 0 is always `benign` and label 1 always holds the melanomas, so the binary designs share one meaning of
"positive" and the 3-class design's melanoma-vs-rest figures (SE, SP, ACC, mAP) read the same column. The 3-class
order is therefore (benign, melanoma, carcinoma); note the reference implementation's protocol3.csv uses another
order (0 = carcinoma, 1 = melanoma, 2 = benign), which only matters when reading its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from protocols.errors import ProtocolError

MELANOMA = "melanoma"
CARCINOMA = "basal_cell_carcinoma"


@dataclass(frozen=True)
class Design:
    """A labelling of diagnoses: `labels` maps a diagnosis to its class (others are class 0), `drop` is removed."""

    name: str
    classes: tuple[str, ...]
    labels: dict[str, int]
    description: str
    drop: frozenset[str] = field(default_factory=frozenset)

    @property
    def positive(self) -> int:
        """The class scored against the rest for SE, SP, ACC and mAP: the one holding melanoma."""
        return self.labels[MELANOMA]


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design(
            "mal-vs-ben",
            ("benign", "malignant"),
            {MELANOMA: 1, CARCINOMA: 1},
            "melanoma and basal cell carcinoma positive, everything else negative",
        ),
        Design(
            "mela-vs-ben",
            ("benign", "melanoma"),
            {MELANOMA: 1},
            "melanoma positive, everything else negative, basal cell carcinomas removed",
            drop=frozenset({CARCINOMA}),
        ),
        Design(
            "mela-vs-carc-vs-ben",
            ("benign", "melanoma", "carcinoma"),
            {MELANOMA: 1, CARCINOMA: 2},
            "three classes: melanoma, basal cell carcinoma, everything else benign",
        ),
    )
}


def get_design(name: str) -> Design:
    if name not in DESIGNS:
        raise ProtocolError(f"unknown protocol {name!r}; available: {', '.join(DESIGNS)}")
    return DESIGNS[name]


def apply_design(manifest: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The rows `protocol` keeps, with an int column `label`; ProtocolError when the design does not fit the data."""
    design = get_design(protocol)
    diagnoses = manifest["diagnosis"]
    non_skin = sorted({d for d in diagnoses if d.startswith("retinopathy")})
    if non_skin:
        raise ProtocolError(f"{protocol}: the dataset holds non-skin diagnoses {non_skin}; it is a source task, "
                            "not a melanoma-screening target")
    if CARCINOMA in design.labels and not (diagnoses == CARCINOMA).any():
        # without carcinomas mal-vs-ben silently equals mela-vs-ben and the 3-class design loses a class
        raise ProtocolError(f"{protocol} needs basal cell carcinomas and this dataset has none; "
                            "use --protocol mela-vs-ben")
    kept = manifest[~diagnoses.isin(design.drop)]
    labelled = kept.assign(label=kept["diagnosis"].map(design.labels).fillna(0).astype(int))
    counts = labelled["label"].value_counts()
    empty = [c for i, c in enumerate(design.classes) if counts.get(i, 0) == 0]
    if empty:
        raise ProtocolError(f"{protocol}: no images of class(es) {empty} in this dataset; the design cannot be scored")
    return labelled.reset_index(drop=True)
