"""Drawing primitives for the built-in datasets: shape polygons, soft masks, textured scenes.

Coordinates are continuous pixel coordinates (the image spans ``[0, W] x [0, H]``). Shapes are
rasterised at 4x and box-filtered down, so edges are anti-aliased; a shape's hard mask is its
coverage ``>= 0.5``, which is also where it dominates the composited colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
# Vertex radius of each shape relative to its nominal radius, so shapes of one radius look alike.
_EXTENT = {
    "circle": 1.0,
    "square": 0.9 * math.sqrt(2),
    "triangle": 1.25,
    "star": 1.3,
    "cross": math.hypot(1.0, 0.35),
    "pentagon": 1.1,
    "hexagon": 1.05,
}
SHAPE_KINDS = tuple(_EXTENT)
"""Every shape kind the generators can draw."""


@dataclass
class Shape:
    """One shape to draw: kind, centre, nominal radius, rotation (radians), x-stretch, colour."""

    kind: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    aspect: float = 1.0
    colour: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def polygon(self) -> np.ndarray:
        """Returns the vertices ``[K, 2]`` (x, y) of the shape."""
        return _place(_unit_polygon(self.kind), self)

    def extent(self) -> float:
        """Upper bound on the distance from the centre to any vertex."""
        return self.radius * _EXTENT[self.kind] * max(self.aspect, 1.0)


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices of a shape of nominal radius 1 centred at the origin."""
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "square":
        t = math.pi / 4 + np.arange(4) * math.pi / 2
        return 0.9 * math.sqrt(2) * np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return 1.25 * np.stack([np.cos(t), np.sin(t)], 1)
    if kind in ("pentagon", "hexagon"):
        n = 5 if kind == "pentagon" else 6
        t = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
        return _EXTENT[kind] * np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.3, 0.55)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if kind == "cross":
        a, b = 1.0, 0.35
        return np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown shape kind {kind!r}")


def _place(unit: np.ndarray, shape: Shape) -> np.ndarray:
    points = unit * np.array([shape.radius * shape.aspect, shape.radius])
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    rotated = points @ np.array([[c, s], [-s, c]])
    return rotated + np.array([shape.cx, shape.cy])


def coverage(shape: Shape, height: int, width: int) -> np.ndarray:
    """Returns the anti-aliased coverage ``float32 [H, W]`` in [0, 1] of a shape."""
    big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    points = [(float(x) * SUPERSAMPLE, float(y) * SUPERSAMPLE) for x, y in shape.polygon()]
    ImageDraw.Draw(big).polygon(points, fill=255)
    small = big.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def tight_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """Returns the pixel-edge box ``(x1, y1, x2, y2)`` of ``alpha >= 0.5``, or ``None`` if empty."""
    ys, xs = np.nonzero(alpha >= 0.5)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def background(rng: np.random.Generator, height: int, width: int, lines: int = 2) -> np.ndarray:
    """A textured, cluttered background ``float32 [H, W, 3]``.

    A smooth random colour field (a coarse grid upsampled bicubically), optional sinusoidal stripes
    and up to ``lines`` thin random line segments.
    """
    grid = int(rng.integers(3, 7))
    base = rng.uniform(15, 120, 3)
    coarse = np.clip(base + rng.normal(0, 20, (grid, grid, 3)), 0, 255).astype(np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(0, lines + 1))):
        x0, x1 = rng.uniform(0, width, 2)
        y0, y1 = rng.uniform(0, height, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
    image = np.asarray(field, dtype=np.float32).copy()
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        theta, freq = rng.uniform(0, math.pi), rng.uniform(0.2, 0.8)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * freq
        image += rng.uniform(3, 8) * np.sin(phase)[..., None]
    return image


_LUMA = np.array([0.299, 0.587, 0.114])


def contrasting_colour(
    rng: np.random.Generator, against: np.ndarray, luma_gap: float = 80.0
) -> tuple[float, float, float]:
    """A random RGB colour whose luma differs from that of ``against`` by at least ``luma_gap``.

    The shape is darker than a bright background and brighter than a dark one; its hue is random,
    so colour carries no class information while edges stay visible in every channel mix.
    """
    luma = float(_LUMA @ against)
    brighter = luma < 110.0
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        gap = float(_LUMA @ colour) - luma
        if (gap if brighter else -gap) >= luma_gap:
            return float(colour[0]), float(colour[1]), float(colour[2])
    return (255.0, 255.0, 255.0) if brighter else (0.0, 0.0, 0.0)


def paint(image: np.ndarray, rng: np.random.Generator, shape: Shape, alpha: np.ndarray) -> None:
    """Composites a shape (flat colour plus a mild linear shading) onto ``image`` in place."""
    height, width = alpha.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(-1, 1, 2) * 15 / max(shape.radius, 1.0)
    shading = ((xx - shape.cx) * gx + (yy - shape.cy) * gy)[..., None]
    fill = np.asarray(shape.colour, np.float32) + shading
    image *= 1 - alpha[..., None]
    image += alpha[..., None] * fill


def finish(image: np.ndarray, rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    """Adds pixel noise and converts to ``uint8``."""
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return (np.clip(image, 0, 255) + 0.5).astype(np.uint8)


def local_mean(image: np.ndarray, shape: Shape) -> np.ndarray:
    """Mean colour of ``image`` in the square window around a shape (for contrast checks)."""
    r = max(int(shape.extent()), 1)
    y0, x0 = max(int(shape.cy) - r, 0), max(int(shape.cx) - r, 0)
    window = image[y0 : int(shape.cy) + r + 1, x0 : int(shape.cx) + r + 1]
    return window.reshape(-1, 3).mean(0) if window.size else image.reshape(-1, 3).mean(0)
