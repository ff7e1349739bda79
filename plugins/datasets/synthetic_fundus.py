"""`synthetic-fundus`: procedurally drawn retina photographs graded 0-4, a stand-in for Kaggle DR.

Nothing here is real data. It exists so the offline demo can run the paper's retinopathy source stage (and the
`double` transfer) without the Kaggle download. Every image is an orange fundus disc on black with an optic disc
and branching vessels; the grade sets how many lesions are drawn, as in the clinical scale: microaneurysms (small
red dots) from grade 1, haemorrhages and hard exudates (yellow spots) growing from grade 2, cotton-wool spots from
grade 3 and fine new vessels at grade 4. Counts are Poisson-drawn, so neighbouring grades overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from annotated_types import Ge
from PIL import Image, ImageDraw, ImageFilter

from plugins.datasets.common import checked_options, finish, generated
from plugins.datasets.drawing import Placement, branching_line, dots, downsample, jitter, to_pixels

VERSION = 2  # part of the cache key: bump when the drawing changes
GRADE_SHARES = (0.3, 0.2, 0.25, 0.15, 0.1)
# mean number of each finding per grade 0..4
MICROANEURYSMS = (0.5, 6, 14, 22, 26)
HAEMORRHAGES = (0, 0.5, 3, 8, 10)
EXUDATES = (0, 0.3, 4, 9, 11)
COTTON_WOOL = (0, 0, 0.3, 2.5, 3.5)
NEW_VESSELS = (0, 0, 0, 0.3, 3)

DESCRIPTION = ("SYNTHETIC fundus-like images (not real data) graded retinopathy_0..4, a stand-in for kaggle-dr "
               "so the retino/double source stages run offline; options n=300, size=128, seed=0")


@checked_options("synthetic-fundus")
def load(root: Path | None = None, n: Annotated[int, Ge(10)] = 300, size: Annotated[int, Ge(32)] = 128,
         seed: Annotated[int, Ge(0)] = 0) -> pd.DataFrame:
    params = {"version": VERSION, "n": n, "size": size, "seed": seed}
    return finish(generated("synthetic-fundus", params, lambda folder: _write(folder, n, size, seed)))


def _write(folder: Path, n: int, size: int, seed: int) -> pd.DataFrame:
    counts = [int(round(n * share)) for share in GRADE_SHARES]
    counts[0] += n - sum(counts)
    grades = np.random.default_rng(seed).permutation(np.repeat(np.arange(5), counts))
    rows = []
    for index, grade in enumerate(grades):
        image_id = f"fundus{index:05d}"
        image = draw_fundus(int(grade), size, np.random.default_rng([seed, index]))
        image.save(folder / f"{image_id}.png", compress_level=1)  # fast; the files are a cache
        rows.append({"image_id": image_id, "path": f"{image_id}.png", "diagnosis": f"retinopathy_{grade}",
                     "source_label": int(grade)})
    return pd.DataFrame(rows)


def draw_fundus(grade: int, size: int, rng: np.random.Generator) -> Image.Image:
    big = 2 * size  # drawn at twice the size and downsampled, for smooth edges
    cx, cy = big / 2 + rng.uniform(-0.03, 0.03, 2) * big
    retina: Placement = (cx, cy, big * rng.uniform(0.44, 0.48), rng.uniform(0, 2 * np.pi))
    layer = _retina(rng, big, retina)
    draw = ImageDraw.Draw(layer)
    side = rng.choice([-1, 1])  # left or right eye: the optic disc sits on one side
    optic = np.array([side * rng.uniform(0.35, 0.5), rng.uniform(-0.1, 0.1)])
    for _ in range(rng.integers(4, 7)):  # vessels leave the optic disc, thinning as they branch
        branching_line(draw, rng, retina, optic, rng.uniform(0, 2 * np.pi), (120, 20, 15),
                       width=max(2, big // 70), steps=9, step=0.1, wander=0.2)
    (x, y), = to_pixels(optic[None], retina)
    r = 0.13 * retina[2]
    draw.ellipse([x - r, y - r, x + r, y + r], fill=jitter(rng, (245, 215, 140), 8))
    _findings(draw, rng, retina, grade, optic)
    image = Image.composite(layer, Image.new("RGB", (big, big)), _disc_mask(big, retina))
    return downsample(image.filter(ImageFilter.GaussianBlur(big / 400)), size, rng, noise=2.5)


def _retina(rng: np.random.Generator, big: int, retina: Placement) -> Image.Image:
    """Orange-red background, darker towards the rim, with a darker macula in the middle and some mottling."""
    axis = np.arange(big, dtype=np.float32)
    rim = np.hypot(axis[None, :] - retina[0], axis[:, None] - retina[1]) / retina[2]  # 0 centre, 1 edge
    tone = np.array(jitter(rng, (205, 95, 45), 15), dtype=np.float32)
    shade = 1 - 0.35 * rim ** 2 - 0.25 * np.exp(-(rim / 0.15) ** 2)
    mottling = 5 * rng.standard_normal((big, big, 3), dtype=np.float32)
    return Image.fromarray(np.clip(tone * shade[..., None] + mottling, 0, 255).astype(np.uint8))


def _disc_mask(big: int, retina: Placement) -> Image.Image:
    mask = Image.new("L", (big, big), 0)
    cx, cy, radius, _ = retina
    ImageDraw.Draw(mask).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    return mask


def _findings(draw: ImageDraw.ImageDraw, rng: np.random.Generator, retina: Placement, grade: int,
              optic: np.ndarray) -> None:
    dots(draw, rng, retina, rng.poisson(MICROANEURYSMS[grade]), (110, 15, 15), 0.012, 0.85, False)
    dots(draw, rng, retina, rng.poisson(HAEMORRHAGES[grade]), (100, 20, 15), 0.035, 0.8, False)
    dots(draw, rng, retina, rng.poisson(EXUDATES[grade]), (235, 215, 110), 0.018, 0.7, True)
    dots(draw, rng, retina, rng.poisson(COTTON_WOOL[grade]), (235, 225, 205), 0.045, 0.7, False)
    for _ in range(rng.poisson(NEW_VESSELS[grade])):  # fine tangles near the optic disc
        start = optic + rng.uniform(-0.15, 0.15, 2)
        branching_line(draw, rng, retina, start, rng.uniform(0, 2 * np.pi), (150, 30, 25), width=2, steps=5,
                       step=0.04, wander=1.2)
