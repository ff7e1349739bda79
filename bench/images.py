"""Decoding and resizing, shared by extraction, training and the benchmarks so they all see the same pixels."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import BenchError

CHECK_SIZE = 64  # `check_image` decodes every byte of the file but needs no more pixels than this
# part of the key of the decoded images `bench.train.loop` keeps: change it with anything that changes the pixels below
IMAGES_VERSION = 2
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


RESIZE_MODES = ("square", "shorter-side")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def load_image(path: str | Path, size: int, *, resize_mode: str = "square", crop_pct: float = 1.0,
               interpolation: str = "bilinear") -> np.ndarray:
    """RGB uint8 array (size, size, 3). `square` (the default): resized ignoring the aspect ratio, as the paper
    did. `shorter-side`: the shorter side resized to size / crop_pct keeping the aspect ratio, then the centre
    size x size cropped, as timm's and open_clip's evaluation transforms do."""
    resample = INTERPOLATIONS[interpolation]
    scaled = int(size / crop_pct)  # timm's own rounding (math.floor) of its eval transform's scale size
    try:
        with Image.open(path) as image:
            # lets JPEG decode at a reduced scale when the file is much larger (never below the size asked for)
            image.draft("RGB", (scaled, scaled) if resize_mode == "shorter-side" else (size, size))
            rgb = to_rgb(image, path)
            if resize_mode == "square":
                return np.asarray(rgb.resize((size, size), resample))
            return np.asarray(_centre_crop(_shorter_side(rgb, scaled, resample), size))
    except Image.DecompressionBombError as exc:  # PIL refuses to allocate a huge image: a deliberate bomb or a scan
        raise BenchError(f"cannot decode image {path}: {exc} Downscale or remove the file (or pass --skip-bad)") \
            from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise BenchError(f"cannot decode image {path}: {exc}. Replace or remove the file (or pass --skip-bad)") from exc


def _shorter_side(image: Image.Image, side: int, resample: int) -> Image.Image:
    """The image with its shorter side `side` pixels, its aspect ratio kept (torchvision's Resize(int))."""
    width, height = image.size
    if width <= height:
        return image.resize((side, int(side * height / width)), resample)
    return image.resize((int(side * width / height), side), resample)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre size x size (torchvision's CenterCrop rounding)."""
    width, height = image.size
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """8-bit RGB from any mode PIL opens, by the mode's real range: PIL's own `convert("RGB")` clips 16-bit and
    float pixels at 255 (a 16-bit dermoscopy image comes out near white). Transparent pixels are laid on black,
    the colour outside a dermoscope's field of view. Pixels whose range cannot be known are refused."""
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_8_bits(np.asarray(image), _bits(image), image.mode, path)).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # 1, L, P, RGB (16-bit RGB PNGs are opened at 8 bits), CMYK, YCbCr


def _bits(image: Image.Image) -> int | None:
    """The bit depth of integer pixels where the file says it: `I;16`, PNG (whose integer mode is 16-bit grey), a
    TIFF's BitsPerSample up to 16. None for float pixels, and for 32-bit ones, whose real range (full 32 bits, or
    a 16-bit image in a wider container) no file states."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return 16
    bits = int(np.max(image.tag_v2.get(258, 0))) if image.format == "TIFF" else 0  # one per channel
    return bits if 0 < bits <= 16 else None


def _to_8_bits(values: np.ndarray, bits: int | None, mode: str, path: str | Path) -> np.ndarray:
    """Integer pixels scaled from their bit depth's range, float ones from [0, 1] (or [0, 255]) to 0..255."""
    floats, values = values.dtype.kind == "f", values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = 2.0 ** bits - 1 if bits else (1.0 if high <= 1 else 255.0) if floats else None
    if top is None or not low >= 0 or not high <= top:  # NaN fails both
        raise BenchError(f"cannot decode image {path}: its pixels (mode {mode}) range over {low:g}..{high:g}, not "
                         "a range bench can map to 8 bits without guessing. Save it as an 8- or 16-bit PNG or a "
                         "JPEG (or pass --skip-bad)")
    return np.round(values * (255.0 / top)).astype(np.uint8)


def check_image(path: str | Path) -> str | None:
    """None when the file decodes to the end, else the reason it does not (naming the file)."""
    try:
        load_image(path, CHECK_SIZE)
    except BenchError as exc:
        return str(exc)
    return None
