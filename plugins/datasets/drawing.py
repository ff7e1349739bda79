"""Drawing primitives shared by the synthetic generators. Shapes are made in lesion coordinates (unit radius,
centred on the origin) and mapped to pixels by a placement, so one drawing can be shown at any position, scale
and rotation."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]
Placement = tuple[float, float, float, float]  # centre x, centre y, radius in pixels, rotation in radians


def to_pixels(points: np.ndarray, place: Placement) -> list[tuple[float, float]]:
    """Lesion coordinates to pixels: rotate, scale and shift by the placement."""
    cx, cy, radius, angle = place
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.asarray(points) @ np.array([[c, s], [-s, c]])
    return [(cx + radius * x, cy + radius * y) for x, y in rotated]


def outline(rng: np.random.Generator, irregular: float, points: int = 120) -> np.ndarray:
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


def jitter(rng: np.random.Generator, colour: Colour, amount: float = 12) -> Colour:
    """Mostly lighter or darker, a little hue shift: independent channel noise would turn brown into purple."""
    shifted = np.array(colour) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
    return tuple(int(c) for c in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def dots(draw: ImageDraw.ImageDraw, rng: np.random.Generator, place: Placement, count: int, colour: Colour,
         radius: float, spread: float, one_sided: bool) -> None:
    """`count` round dots of about `radius` (in lesion units) within `spread`, clustered on one side or not."""
    side = rng.uniform(0, 2 * np.pi)
    lesion_radius = place[2]
    for _ in range(count):
        angle = side + rng.normal(0, 0.8) if one_sided else rng.uniform(0, 2 * np.pi)
        rho = spread * np.sqrt(rng.uniform(0, 1))
        (x, y), = to_pixels(np.array([[rho * np.cos(angle), rho * np.sin(angle)]]), place)
        r = lesion_radius * radius * rng.uniform(0.6, 1.4)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=jitter(rng, colour, 8))


def branching_line(draw: ImageDraw.ImageDraw, rng: np.random.Generator, place: Placement, start: np.ndarray,
                   heading: float, colour: Colour, width: int, steps: int, step: float = 0.09,
                   wander: float = 0.35) -> None:
    """A wandering line that forks into thinner branches (vessels of a lesion or of a retina)."""
    stack = [(start, heading, width, steps)]
    while stack:
        point, heading, width, steps = stack.pop()
        path = [point]
        for _ in range(steps):
            heading += rng.normal(0, wander)
            path.append(path[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
            if width > 1 and rng.random() < 0.25:
                stack.append((path[-1], heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0), width - 1, steps - 1))
        draw.line(to_pixels(np.array(path), place), fill=jitter(rng, colour, 10), width=int(width))


def downsample(image: Image.Image, size: int, rng: np.random.Generator, noise: float = 3.0) -> Image.Image:
    """Shrink the over-sized drawing (smooth edges) and add sensor-like noise."""
    pixels = np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32)
    pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
