"""Test-time augmentation in extraction: an image's feature is the mean of the features of its views.

`dihedral` is the 8 symmetries of the square (4 rotations, each mirrored or not): a dermoscopy image has no up,
so every view is as plausible as the original. Views are made from the decoded, normalised batch, so each image is
decoded once and the model runs on batches of the same size as without TTA.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np



def dihedral_views(images: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 views of a batch (N, C, S, S): rotations by 0/90/180/270 degrees, each also mirrored left-right."""
    for turns in range(4):
        rotated = np.rot90(images, turns, axes=(2, 3))
        yield np.ascontiguousarray(rotated)
        yield np.ascontiguousarray(rotated[..., ::-1])


def mean_over_views(model: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """The mean of `model`'s features over the batch's dihedral views, accumulated in float64."""
    total = None
    for view in dihedral_views(images):
        features = model(view).astype(np.float64)
        total = features if total is None else total + features
    return (total / 8).astype(np.float32)
