"""Scene -> RGB pixels. Crisp edges (no anti-aliasing), so a shape's colour is exact and its outline
depends only on its geometry; backgrounds have a period of 4 px, matching small quantizer patches."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.scenes.scene import COLOURS, Scene, Shape

DARK, LIGHT = 70, 110


def background(scene: Scene) -> np.ndarray:
    s = scene.image_size
    y, x = np.mgrid[0:s, 0:s]
    if scene.background == "plain":
        grey = np.full((s, s), (DARK + LIGHT) // 2)
    elif scene.background == "striped":
        grey = np.where((y // 2) % 2 == 0, DARK, LIGHT)
    elif scene.background == "checked":
        grey = np.where((x // 4 + y // 4) % 2 == 0, DARK, LIGHT)
    elif scene.background == "noisy":
        rng = np.random.default_rng(scene.noise_seed)
        grey = np.clip(rng.normal((DARK + LIGHT) / 2, 16, (s, s)), 0, 255)
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def _draw(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x, y, r = shape.cx, shape.cy, shape.radius
    fill = COLOURS[shape.colour]
    if shape.kind == "square":
        h = max(1, round(r * 0.85))
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif shape.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    elif shape.kind == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif shape.kind == "cross":
        t = max(1, round(r * 0.35))
        draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape.kind!r}")


def render(scene: Scene) -> Image.Image:
    im = Image.fromarray(background(scene), "RGB")
    draw = ImageDraw.Draw(im)
    for shape in scene.shapes:
        _draw(draw, shape)
    return im
