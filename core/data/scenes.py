"""Synthetic scenes for the offline demo: one filled shape on a plain or shaded background.

Two disjoint sets of shape classes play the two roles of the article's experiment:

- SOURCE_SHAPES, twenty simple shapes (discs, polygons, stars, rings, bars, letters ...), stand in for
  ImageNet: a small CNN is pretrained on them once (core.models.demo_backbone).
- TARGET_SHAPES, three shapes that never occur in the source set (hearts, crescents, arrows), stand in for
  cats_vs_dogs: the demo dataset the two models are compared on.

Every scene varies position, size, rotation, colours and background, so a class is its shape. In the
target set each class also leans towards a hue (hearts reddish, crescents yellowish, arrows bluish) with
wide overlap, the way real classes correlate with colour: a network that learns from the few demo images
alone picks that cue up first and gets part of the way, as the article's baseline does on cats and dogs.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

Draw = Callable[[ImageDraw.ImageDraw, float, float, float, float], None]  # (draw, cx, cy, radius, angle)
HUE_SPREAD = 0.25  # each target class's hue lies within this of its centre, so classes overlap in colour
MIN_CONTRAST = 200  # sum of |RGB differences| between the shape's and the background's colours


def _rotated(cx: float, cy: float, r: float, angle: float, points) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _polygon(points) -> Draw:
    points = list(points)
    return lambda d, cx, cy, r, a: d.polygon(_rotated(cx, cy, r, a, points), fill=255)


def _regular(n: int, inner: float = 0.0) -> list[tuple[float, float]]:
    """A regular n-gon, or with inner > 0 an n-pointed star whose inner corners sit at that radius."""
    steps = n * (2 if inner else 1)
    return [((inner if inner and i % 2 else 1.0) * math.cos(-math.pi / 2 + 2 * math.pi * i / steps),
             (inner if inner and i % 2 else 1.0) * math.sin(-math.pi / 2 + 2 * math.pi * i / steps))
            for i in range(steps)]


def _ellipse(ratio: float) -> Draw:
    return _polygon((math.cos(t), ratio * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False))


def _ring(inner: float) -> Draw:
    def draw(d, cx, cy, r, a):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        d.ellipse([cx - r * inner, cy - r * inner, cx + r * inner, cy + r * inner], fill=0)
    return draw


def _frame(inner: float) -> Draw:
    square = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]

    def draw(d, cx, cy, r, a):
        d.polygon(_rotated(cx, cy, r, a, square), fill=255)
        d.polygon(_rotated(cx, cy, r * inner, a, square), fill=0)
    return draw


def _dots(n: int) -> Draw:
    def draw(d, cx, cy, r, a):
        for i in range(n):
            t = a + 2 * math.pi * i / n
            x, y, rr = cx + 0.6 * r * math.cos(t), cy + 0.6 * r * math.sin(t), 0.33 * r
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    return draw


def _bars(n: int) -> Draw:
    def draw(d, cx, cy, r, a):
        for i in range(n):
            off = (i - (n - 1) / 2) * 0.55
            d.polygon(_rotated(cx, cy, r, a, [(-1, off - 0.15), (1, off - 0.15), (1, off + 0.15), (-1, off + 0.15)]),
                      fill=255)
    return draw


def _crescent(d, cx, cy, r, a):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    ox, oy, rr = cx + 0.55 * r * math.cos(a), cy + 0.55 * r * math.sin(a), 0.85 * r
    d.ellipse([ox - rr, oy - rr, ox + rr, oy + rr], fill=0)


_HEART = [(16 * math.sin(t) ** 3 / 17,
           -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
          for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
_ARROW = [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)]
_PLUS = [(-1, -.3), (-.3, -.3), (-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
         (-.3, .3), (-1, .3)]

SOURCE_SHAPES: dict[str, Draw] = {
    "disc": _ellipse(1.0), "oval": _ellipse(0.55), "triangle": _polygon(_regular(3)),
    "square": _polygon(_regular(4)), "pentagon": _polygon(_regular(5)), "hexagon": _polygon(_regular(6)),
    "star4": _polygon(_regular(4, 0.4)), "star5": _polygon(_regular(5, 0.45)), "star8": _polygon(_regular(8, 0.6)),
    "plus": _polygon(_PLUS), "ring": _ring(0.6), "frame": _frame(0.6), "two_dots": _dots(2),
    "three_dots": _dots(3), "two_bars": _bars(2), "three_bars": _bars(3),
    "l_shape": _polygon([(-.8, -1), (-.2, -1), (-.2, .4), (.8, .4), (.8, 1), (-.8, 1)]),
    "t_shape": _polygon([(-1, -1), (1, -1), (1, -.4), (.3, -.4), (.3, 1), (-.3, 1), (-.3, -.4), (-1, -.4)]),
    "bar": _polygon([(-1, -.45), (1, -.45), (1, .45), (-1, .45)]),
    "semicircle": _polygon((math.cos(t), math.sin(t)) for t in np.linspace(0, math.pi, 24)),
}
# name -> (shape, the hue its colours lean towards)
TARGET_SHAPES: dict[str, tuple[Draw, float]] = {
    "hearts": (_polygon(_HEART), 0.0),
    "crescents": (_crescent, 0.15),
    "arrows": (_polygon(_ARROW), 0.6),
}


def _shading(rng: np.random.Generator, size: int, colour: np.ndarray, spread: float) -> np.ndarray:
    """A plain colour or a linear gradient towards a nearby colour, float (size, size, 3)."""
    other = np.clip(colour + rng.uniform(-spread, spread, 3), 0, 255)
    if rng.random() < 0.5:
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = ((xx * math.cos(a) + yy * math.sin(a)) / size + 1) / 2
    return colour * (1 - t[..., None]) + other * t[..., None]


def _shape_colour(rng: np.random.Generator, background: np.ndarray, hue: float | None) -> np.ndarray:
    while True:
        if hue is None:
            colour = rng.integers(0, 256, 3).astype(np.float32)
        else:
            h = (hue + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 1.0
            colour = 255 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1), rng.uniform(0.5, 1)), np.float32)
        if np.abs(colour - background).sum() > MIN_CONTRAST:
            return colour


def scene(draw: Draw, rng: np.random.Generator, size: int, hue: float | None = None) -> np.ndarray:
    """One uint8 (size, size, 3) image: the shape, anywhere, at any angle, on a noisy background."""
    background = rng.integers(0, 256, 3).astype(np.float32)
    image = _shading(rng, size, background, 70) + rng.normal(0, rng.uniform(3, 20), (size, size, 3))
    # Drawn at twice the size and shrunk: smooth edges, as a photographed object has.
    mask = Image.new("L", (2 * size, 2 * size), 0)
    r = 2 * size * rng.uniform(0.2, 0.36)
    draw(ImageDraw.Draw(mask), rng.uniform(r, 2 * size - r), rng.uniform(r, 2 * size - r), r,
         rng.uniform(0, 2 * math.pi))
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR), np.float32)[..., None] / 255
    fill = _shading(rng, size, _shape_colour(rng, background, hue), 50)
    return np.clip(image * (1 - alpha) + fill * alpha, 0, 255).astype(np.uint8)


def source_images(per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, size, size, 3), int labels (n,)) of the pretraining classes, classes interleaved."""
    rng = np.random.default_rng(seed)
    shapes = list(SOURCE_SHAPES.values())
    images = np.empty((per_class * len(shapes), size, size, 3), np.uint8)
    labels = np.tile(np.arange(len(shapes)), per_class)
    for i, label in enumerate(labels):
        images[i] = scene(shapes[label], rng, size)
    return images, labels


def target_image(class_name: str, rng: np.random.Generator, size: int) -> Image.Image:
    draw, hue = TARGET_SHAPES[class_name]
    return Image.fromarray(scene(draw, rng, size, hue))
