"""`synthetic`: procedurally drawn, lesion-like dermoscopy images with a real but imperfect class signal.

Nothing here is real data. Each lesion has an *atypia* a in [0, 1] (mostly small) that says how far its drawing
departs from its class prototype, and a *look* m in [0, 1] from benign-regular (0) to melanoma-like (1):
melanomas get m = 1 - 0.9 a, benign lesions m = 0.9 a. The look drives asymmetry, ragged borders and the number
of colours, so atypical benign lesions look a bit malignant and atypical melanomas fairly regular: the classes
are separable but not perfectly, and the atlas-like `difficulty` column (low / medium / high by atypia) means what
the Atlas' own difficulty means. Basal cell carcinomas have their own look (pink, translucent, arborising
vessel-like lines, blue-grey nests); nevi are round, uniformly brown; seborrheic keratoses are tan ovals with
milia-like dots. Every image is drawn from a generator seeded by (seed, lesion, view), so a lesion's second image
is the same lesion at another position, scale and rotation on another patch of skin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from annotated_types import Ge
from PIL import Image, ImageDraw, ImageFilter

from plugins.datasets.common import checked_options, finish, generated
from plugins.datasets.drawing import Colour, Placement, branching_line, dots, downsample, jitter, outline, to_pixels

VERSION = 2  # part of the cache key: bump when the drawing changes
CLASS_SHARES = {"melanoma": 0.30, "basal_cell_carcinoma": 0.15, "nevus": 0.35, "seborrheic_keratosis": 0.20}
SECOND_VIEW = 0.2  # share of lesions photographed twice
TEST_SHARE = 0.3
DIFFICULTY_EDGES = (0.25, 0.5)  # atypia below the first is low, below the second medium, else high

LIGHT_BROWN: Colour = (135, 88, 58)
DARK_BROWN: Colour = (70, 42, 30)
MELANOMA_PALETTE: list[Colour] = [(35, 25, 25), (80, 50, 35), (150, 100, 65), (95, 105, 140), (165, 70, 70),
                                  (205, 195, 195)]

DESCRIPTION = ("SYNTHETIC lesion-like images (not real data), drawn and cached offline; options n=240, size=128, "
               "seed=0; melanoma / BCC / nevus / seborrheic keratosis, lesion ids, difficulty, 70/30 split")


@checked_options("synthetic")
def load(root: Path | None = None, n: Annotated[int, Ge(20)] = 240, size: Annotated[int, Ge(32)] = 128,
         seed: Annotated[int, Ge(0)] = 0) -> pd.DataFrame:
    params = {"version": VERSION, "n": n, "size": size, "seed": seed}
    return finish(generated("synthetic", params, lambda folder: _write(folder, n, size, seed)))


def _write(folder: Path, n: int, size: int, seed: int) -> pd.DataFrame:
    rows = _plan(n, np.random.default_rng(seed))
    order = np.random.default_rng([seed, 1]).permutation(len(rows))  # image ids must not reveal the class
    for row, number in zip(rows, order):
        row["image_id"] = f"syn{number:05d}"
        row["path"] = f"{row['image_id']}.png"
        image = draw_lesion(row["diagnosis"], row["atypia"], size, seed, row["lesion"], row["view"])
        image.save(folder / row["path"], compress_level=1)  # fast; the files are a cache
    manifest = pd.DataFrame(rows)
    manifest["lesion_id"] = [f"les{number:05d}" for number in manifest["lesion"]]
    manifest["difficulty"] = pd.cut(manifest["atypia"], [-1, *DIFFICULTY_EDGES, 2], labels=["low", "medium", "high"])
    return manifest[["image_id", "path", "diagnosis", "split", "difficulty", "lesion_id"]]


def _plan(n: int, rng: np.random.Generator) -> list[dict]:
    """Exact class counts; lesions of one or two images; a 70/30 train/test split grouped by lesion per class."""
    counts = {d: int(round(n * share)) for d, share in CLASS_SHARES.items()}
    counts["nevus"] += n - sum(counts.values())
    rows: list[dict] = []
    lesion = 0
    for diagnosis, count in counts.items():
        sizes: list[int] = []
        while sum(sizes) < count:
            sizes.append(2 if count - sum(sizes) >= 2 and rng.random() < SECOND_VIEW else 1)
        in_test = 0
        for views in rng.permutation(np.array(sizes, dtype=int)):
            split = "test" if in_test + views <= round(count * TEST_SHARE) else "train"
            in_test += views if split == "test" else 0
            atypia = float(rng.beta(1.4, 2.6))
            rows += [dict(diagnosis=diagnosis, atypia=atypia, split=split, lesion=lesion, view=v) for v in range(views)]
            lesion += 1
    return rows


def draw_lesion(diagnosis: str, atypia: float, size: int, seed: int, lesion: int, view: int) -> Image.Image:
    """One RGB image. The lesion's own generator is re-seeded per image so both views draw the same lesion."""
    big = 2 * size  # drawn at twice the size and downsampled, for smooth edges
    look = 1 - 0.9 * atypia if diagnosis == "melanoma" else 0.9 * atypia
    shape_rng = np.random.default_rng([seed, lesion])
    view_rng = np.random.default_rng([seed, lesion, view, 7])
    place = _placement(view_rng, big)
    skin = _skin(view_rng, big)
    layer, mask = _LOOKS[diagnosis](shape_rng, place, big, look, atypia)
    softness = big * (0.004 + 0.012 * shape_rng.random())
    image = Image.composite(layer, skin, mask.filter(ImageFilter.GaussianBlur(softness)))
    _hairs(ImageDraw.Draw(image), view_rng, big)
    return downsample(image, size, view_rng)


# --- placement and background -------------------------------------------------------------------------------

def _placement(rng: np.random.Generator, big: int) -> Placement:
    """(centre x, centre y, radius, rotation) of the lesion in this view."""
    radius = big * rng.uniform(0.2, 0.32)
    cx, cy = big / 2 + rng.uniform(-0.12, 0.12, 2) * big
    return cx, cy, radius, rng.uniform(0, 2 * np.pi)


def _skin(rng: np.random.Generator, big: int) -> Image.Image:
    """Skin-coloured, unevenly lit, blotchy and noisy: no class information."""
    tone = np.array([rng.uniform(200, 240), rng.uniform(150, 190), rng.uniform(120, 160)])
    blotches = np.asarray(Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32)).resize((big, big), Image.BICUBIC))
    ramp = np.linspace(-1, 1, big)
    light = rng.uniform(-12, 12) * ramp[None, :] + rng.uniform(-12, 12) * ramp[:, None]
    pixels = tone + (6 * blotches + light)[..., None] + 4 * rng.standard_normal((big, big, 3), dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _hairs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, big: int) -> None:
    for _ in range(rng.integers(0, 4)):
        start, bend, end = rng.uniform(0, big, (3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        draw.line([tuple(p) for p in curve], fill=(60, 40, 30), width=int(rng.integers(1, 3)))


# --- shapes and colours ---------------------------------------------------------------------------------------
# Each look takes (lesion generator, placement, canvas size, look m, atypia) and returns (colour layer, mask).

Look = tuple[Image.Image, Image.Image]


def _canvas(rng: np.random.Generator, place: Placement, big: int, base: Colour, irregular: float,
            opacity: int = 255) -> Look:
    """Lesion colour layer filled with `base` and its mask (the outline), ready for details to be drawn on."""
    layer = Image.new("RGB", (big, big), jitter(rng, base))
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(to_pixels(outline(rng, irregular), place), fill=opacity)
    return layer, mask


def _patches(draw: ImageDraw.ImageDraw, rng: np.random.Generator, place: Placement, count: int,
             palette: list[Colour], spread: float) -> None:
    """Irregular patches of other colours, off-centre towards one side so the lesion becomes asymmetric."""
    side = rng.uniform(0, 2 * np.pi)
    for _ in range(count):
        angle = side + rng.normal(0, 1.0)
        rho = spread * rng.uniform(0.1, 0.6)
        centre = np.array([rho * np.cos(angle), rho * np.sin(angle)])
        patch = centre + rng.uniform(0.2, 0.45) * outline(rng, 0.8)
        draw.polygon(to_pixels(patch, place), fill=jitter(rng, palette[rng.integers(len(palette))]))


def _pigmented(rng: np.random.Generator, place: Placement, big: int, look: float, palette: list[Colour]) -> Look:
    """Melanoma and nevus: a brown lesion whose darkness, asymmetry, border and colours all follow the look."""
    base = np.array(LIGHT_BROWN) * (1 - look) + np.array(DARK_BROWN) * look
    layer, mask = _canvas(rng, place, big, tuple(base.astype(int)), irregular=look)
    draw = ImageDraw.Draw(layer)
    if rng.random() > look:  # a regular, slightly darker centre: the symmetric pattern of a typical nevus
        draw.polygon(to_pixels(0.55 * outline(rng, 0.0), place), fill=jitter(rng, tuple((0.85 * base).astype(int)), 6))
    _patches(draw, rng, place, int(round(look * 4 + rng.uniform(-0.5, 0.5))), palette, spread=0.3 + 0.5 * look)
    dots(draw, rng, place, int(look * 14), (30, 22, 22), 0.035, spread=0.95, one_sided=True)
    return layer, mask


def _melanoma(rng: np.random.Generator, place: Placement, big: int, look: float, atypia: float) -> Look:
    return _pigmented(rng, place, big, look, MELANOMA_PALETTE)


def _nevus(rng: np.random.Generator, place: Placement, big: int, look: float, atypia: float) -> Look:
    return _pigmented(rng, place, big, look, MELANOMA_PALETTE[:3])


def _seborrheic_keratosis(rng: np.random.Generator, place: Placement, big: int, look: float, atypia: float) -> Look:
    """Tan oval with milia-like pale dots and a few dark comedo-like ones."""
    layer, mask = _canvas(rng, place, big, (165, 120, 80), irregular=0.3 * look)
    draw = ImageDraw.Draw(layer)
    dots(draw, rng, place, int(rng.integers(8, 20)), (235, 225, 190), 0.04, spread=0.85, one_sided=False)
    dots(draw, rng, place, int(rng.integers(3, 8)), (70, 50, 35), 0.05, spread=0.8, one_sided=False)
    _patches(draw, rng, place, int(round(look * 3)), MELANOMA_PALETTE[:3], spread=0.6)
    return layer, mask


def _basal_cell_carcinoma(rng: np.random.Generator, place: Placement, big: int, look: float, atypia: float) -> Look:
    """Pink and translucent with blue-grey nests and arborising vessels; atypical ones browner, fewer vessels."""
    pink = (np.array([225, 160, 160]) * (1 - atypia) + np.array([150, 100, 75]) * atypia).astype(int)
    layer, mask = _canvas(rng, place, big, tuple(pink), irregular=0.25 + 0.3 * atypia, opacity=200)
    draw = ImageDraw.Draw(layer)
    dots(draw, rng, place, int(rng.integers(1, 5)), (95, 105, 135), 0.09, spread=0.7, one_sided=False)
    for _ in range(int(round((1 - atypia) * 5)) + 1):
        start, heading = rng.uniform(-0.5, 0.5, 2), rng.uniform(0, 2 * np.pi)
        branching_line(draw, rng, place, start, heading, (175, 35, 45), width=max(2, big // 80), steps=6)
    return layer, mask


_LOOKS = {
    "melanoma": _melanoma,
    "nevus": _nevus,
    "seborrheic_keratosis": _seborrheic_keratosis,
    "basal_cell_carcinoma": _basal_cell_carcinoma,
}
