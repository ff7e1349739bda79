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

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from plugins.datasets.common import as_int, checked_options, finish, generated

VERSION = 1  # part of the cache key: bump when the drawing changes
CLASS_SHARES = {"melanoma": 0.30, "basal_cell_carcinoma": 0.15, "nevus": 0.35, "seborrheic_keratosis": 0.20}
SECOND_VIEW = 0.2  # share of lesions photographed twice
TEST_SHARE = 0.3
DIFFICULTY_EDGES = (0.25, 0.5)  # atypia below the first is low, below the second medium, else high

Colour = tuple[int, int, int]
LIGHT_BROWN: Colour = (135, 88, 58)
DARK_BROWN: Colour = (70, 42, 30)
MELANOMA_PALETTE: list[Colour] = [(35, 25, 25), (80, 50, 35), (150, 100, 65), (95, 105, 140), (165, 70, 70),
                                  (205, 195, 195)]

DESCRIPTION = ("SYNTHETIC lesion-like images (not real data), drawn and cached offline; options n=240, size=128, "
               "seed=0; melanoma / BCC / nevus / seborrheic keratosis, lesion ids, difficulty, 70/30 split")


@checked_options("synthetic")
def load(root: Path | None = None, n: str = "240", size: str = "128", seed: str = "0") -> pd.DataFrame:
    params = {"version": VERSION, "n": as_int(n, "n", minimum=20), "size": as_int(size, "size", minimum=32),
              "seed": as_int(seed, "seed", minimum=0)}
    return finish(generated("synthetic", params, lambda folder: _write(folder, params["n"], params["size"],
                                                                       params["seed"])))


def _write(folder: Path, n: int, size: int, seed: int) -> pd.DataFrame:
    rows = _plan(n, np.random.default_rng(seed))
    order = np.random.default_rng([seed, 1]).permutation(len(rows))  # image ids must not reveal the class
    for row, number in zip(rows, order):
        row["image_id"] = f"syn{number:05d}"
        row["path"] = f"{row['image_id']}.png"
        image = draw_lesion(row["diagnosis"], row["atypia"], size, seed, row["lesion"], row["view"])
        image.save(folder / row["path"])
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
    pixels = np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32)
    pixels += view_rng.normal(0, 3.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --- placement and background -------------------------------------------------------------------------------

def _placement(rng: np.random.Generator, big: int) -> tuple[float, float, float, float]:
    """(centre x, centre y, radius, rotation) of the lesion in this view."""
    radius = big * rng.uniform(0.2, 0.32)
    cx, cy = big / 2 + rng.uniform(-0.12, 0.12, 2) * big
    return cx, cy, radius, rng.uniform(0, 2 * np.pi)


def _to_pixels(points: np.ndarray, place: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Lesion coordinates (unit radius, lesion-centred) to pixels: rotate, scale and shift by the view."""
    cx, cy, radius, angle = place
    c, s = np.cos(angle), np.sin(angle)
    rotated = points @ np.array([[c, s], [-s, c]])
    return [(cx + radius * x, cy + radius * y) for x, y in rotated]


def _skin(rng: np.random.Generator, big: int) -> Image.Image:
    """Skin-coloured, unevenly lit, blotchy and noisy: no class information."""
    tone = np.array([rng.uniform(200, 240), rng.uniform(150, 190), rng.uniform(120, 160)])
    blotches = np.asarray(Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32)).resize((big, big), Image.BICUBIC))
    ramp = np.linspace(-1, 1, big)
    light = rng.uniform(-12, 12) * ramp[None, :] + rng.uniform(-12, 12) * ramp[:, None]
    pixels = tone + (6 * blotches + light)[..., None] + rng.normal(0, 4, (big, big, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _hairs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, big: int) -> None:
    for _ in range(rng.integers(0, 4)):
        start, bend, end = rng.uniform(0, big, (3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        draw.line([tuple(p) for p in curve], fill=(60, 40, 30), width=int(rng.integers(1, 3)))


# --- shapes and colours ---------------------------------------------------------------------------------------

def _outline(rng: np.random.Generator, irregular: float, points: int = 120) -> np.ndarray:
    """Closed outline around the origin with radius about 1: a mild ellipse, plus low-frequency asymmetry and a
    ragged high-frequency border that grow with `irregular`. Draws the same numbers whatever `irregular` is."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = 1 + rng.uniform(0, 0.12) * np.cos(2 * (t - rng.uniform(0, np.pi)))
    for f in (1, 2, 3):
        r += irregular * rng.uniform(0.05, 0.2) * np.cos(f * t + rng.uniform(0, 2 * np.pi))
    for f in range(5, 17):
        r += irregular * rng.uniform(0, 0.045) * np.cos(f * t + rng.uniform(0, 2 * np.pi))
    r += irregular * rng.normal(0, 0.035, points)
    r = np.clip(r, 0.35, None)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _jitter(rng: np.random.Generator, colour: Colour, amount: float = 12) -> Colour:
    """Mostly lighter or darker, a little hue shift: independent channel noise would turn brown into purple."""
    shifted = np.array(colour) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
    return tuple(int(c) for c in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def _canvas(rng: np.random.Generator, place, big: int, base: Colour, irregular: float, opacity: int = 255):
    """Lesion colour layer filled with `base` and its mask (the outline), ready for details to be drawn on."""
    layer = Image.new("RGB", (big, big), _jitter(rng, base))
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(_to_pixels(_outline(rng, irregular), place), fill=opacity)
    return layer, mask


def _patches(draw, rng: np.random.Generator, place, count: int, palette: list[Colour], spread: float) -> None:
    """Irregular patches of other colours, off-centre towards one side so the lesion becomes asymmetric."""
    side = rng.uniform(0, 2 * np.pi)
    for _ in range(count):
        angle = side + rng.normal(0, 1.0)
        rho = spread * rng.uniform(0.1, 0.6)
        centre = np.array([rho * np.cos(angle), rho * np.sin(angle)])
        patch = centre + rng.uniform(0.2, 0.45) * _outline(rng, 0.8)
        draw.polygon(_to_pixels(patch, place), fill=_jitter(rng, palette[rng.integers(len(palette))]))


def _dots(draw, rng: np.random.Generator, place, count: int, colour: Colour, radius: float, spread: float,
          one_sided: bool) -> None:
    side = rng.uniform(0, 2 * np.pi)
    cx, cy, lesion_radius, _ = place
    for _ in range(count):
        angle = side + rng.normal(0, 0.8) if one_sided else rng.uniform(0, 2 * np.pi)
        rho = spread * np.sqrt(rng.uniform(0, 1))
        (x, y), = _to_pixels(np.array([[rho * np.cos(angle), rho * np.sin(angle)]]), place)
        r = lesion_radius * radius * rng.uniform(0.6, 1.4)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, colour, 8))


def _pigmented(rng, place, big: int, look: float, palette: list[Colour]):
    """Melanoma and nevus: a brown lesion whose darkness, asymmetry, border and colours all follow the look."""
    base = np.array(LIGHT_BROWN) * (1 - look) + np.array(DARK_BROWN) * look
    layer, mask = _canvas(rng, place, big, tuple(base.astype(int)), irregular=look)
    draw = ImageDraw.Draw(layer)
    if rng.random() > look:  # a regular, slightly darker centre: the symmetric pattern of a typical nevus
        draw.polygon(_to_pixels(0.55 * _outline(rng, 0.0), place), fill=_jitter(rng, tuple((0.85 * base).astype(int)), 6))
    _patches(draw, rng, place, int(round(look * 4 + rng.uniform(-0.5, 0.5))), palette, spread=0.3 + 0.5 * look)
    _dots(draw, rng, place, int(look * 14), (30, 22, 22), 0.035, spread=0.95, one_sided=True)
    return layer, mask


def _melanoma(rng, place, big, look, atypia):
    return _pigmented(rng, place, big, look, MELANOMA_PALETTE)


def _nevus(rng, place, big, look, atypia):
    return _pigmented(rng, place, big, look, MELANOMA_PALETTE[:3])


def _seborrheic_keratosis(rng, place, big, look, atypia):
    layer, mask = _canvas(rng, place, big, (165, 120, 80), irregular=0.3 * look)
    draw = ImageDraw.Draw(layer)
    _dots(draw, rng, place, int(rng.integers(8, 20)), (235, 225, 190), 0.04, spread=0.85, one_sided=False)
    _dots(draw, rng, place, int(rng.integers(3, 8)), (70, 50, 35), 0.05, spread=0.8, one_sided=False)
    _patches(draw, rng, place, int(round(look * 3)), MELANOMA_PALETTE[:3], spread=0.6)
    return layer, mask


def _basal_cell_carcinoma(rng, place, big, look, atypia):
    pink = (np.array([225, 160, 160]) * (1 - atypia) + np.array([150, 100, 75]) * atypia).astype(int)
    layer, mask = _canvas(rng, place, big, tuple(pink), irregular=0.25 + 0.3 * atypia, opacity=200)
    draw = ImageDraw.Draw(layer)
    _dots(draw, rng, place, int(rng.integers(1, 5)), (95, 105, 135), 0.09, spread=0.7, one_sided=False)
    for _ in range(int(round((1 - atypia) * 5)) + 1):
        _vessel(draw, rng, place, big)
    return layer, mask


def _vessel(draw, rng: np.random.Generator, place, big: int) -> None:
    """An arborising red line: a wandering trunk that forks into thinner branches."""
    start = rng.uniform(-0.5, 0.5, 2)
    stack = [(start, rng.uniform(0, 2 * np.pi), max(2, big // 80), 6)]
    while stack:
        point, heading, width, steps = stack.pop()
        path = [point]
        for _ in range(steps):
            heading += rng.normal(0, 0.35)
            path.append(path[-1] + 0.09 * np.array([np.cos(heading), np.sin(heading)]))
            if width > 1 and rng.random() < 0.25:
                stack.append((path[-1], heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0), width - 1, steps - 1))
        draw.line(_to_pixels(np.array(path), place), fill=_jitter(rng, (175, 35, 45), 10), width=int(width))


_LOOKS = {
    "melanoma": _melanoma,
    "nevus": _nevus,
    "seborrheic_keratosis": _seborrheic_keratosis,
    "basal_cell_carcinoma": _basal_cell_carcinoma,
}
