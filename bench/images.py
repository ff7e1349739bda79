"""Decoding and resizing, shared by extraction, training and the benchmarks so they all see the same pixels."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import BenchError

CHECK_SIZE = 64  # `check_image` decodes every byte of the file but needs no more pixels than this
# part of the key of the decoded images `bench.train` keeps: change it with anything that changes the pixels below
IMAGES_VERSION = 1


def load_image(path: str | Path, size: int) -> np.ndarray:
    """RGB uint8 array (size, size, 3), resized ignoring the aspect ratio as the paper did."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # lets JPEG decode at a reduced scale when the file is much larger
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    except Image.DecompressionBombError as exc:  # PIL refuses to allocate a huge image: a deliberate bomb or a scan
        raise BenchError(f"cannot decode image {path}: {exc} Downscale or remove the file (or pass --skip-bad)") \
            from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise BenchError(f"cannot decode image {path}: {exc}. Replace or remove the file (or pass --skip-bad)") from exc


def check_image(path: str | Path) -> str | None:
    """None when the file decodes to the end, else the reason it does not (naming the file)."""
    try:
        load_image(path, CHECK_SIZE)
    except BenchError as exc:
        return str(exc)
    return None
