"""Draw the atlas: sections of cards, one card per token (header figures, its shape, exemplar crops).

A shape's cells show what their codes look like when the quantizer's decoder is at hand (`patches`,
from pipeline.report.appearance), else one stable colour per code with the code number. Drawn with
PIL at fixed pixel sizes: hundreds of small panels render in well under a second, and the layout is
the same on every machine.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.report.cards import Card, Shape

TILE = 128  # shape panel and exemplar crops
VARIANT = 50  # the next most common shapes, stacked beside the main one
GAP = 6
PAD = 8
HEADER = 52
TITLE = 34
SECTION = 26
MAX_WIDTH = 2300
MIN_CARD = 280
BG = (250, 250, 248)
INK = (30, 30, 30)
MUTED = (110, 110, 110)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def code_colour(code: int) -> tuple[int, int, int]:
    """A stable colour per base code: hue, saturation and value from a hash, so neighbouring ids differ."""
    z = (code * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 29)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    hue = (z & 0xFFFF) / 65536.0
    sat = 0.35 + 0.45 * ((z >> 16) & 0xFF) / 255.0
    val = 0.70 + 0.25 * ((z >> 24) & 0xFF) / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_shape(shape: Shape, tile: int = TILE, patches: dict[int, np.ndarray] | None = None) -> Image.Image:
    """A shape's cells on their bounding box: each cell the decoded look of its code when `patches` has it,
    else a colour per code (with the code number when it fits)."""
    im = Image.new("RGB", (tile, tile), (236, 236, 232))
    d = ImageDraw.Draw(im)
    if not shape.cells:
        d.text((6, tile // 2 - 8), "no shape", fill=MUTED, font=font(12))
        return im
    rows = max(r for r, _ in shape.cells) + 1
    lo = min(c for _, c in shape.cells)
    cols = max(c for _, c in shape.cells) - lo + 1
    px = max(2, min(44, (tile - 8) // max(rows, cols)))
    ox = (tile - cols * px) // 2
    oy = (tile - rows * px) // 2
    for i, (r, c) in enumerate(shape.cells):
        code = shape.codes[i] if shape.codes else None
        x0, y0 = ox + (c - lo) * px, oy + r * px
        if patches is not None and code in patches:
            im.paste(Image.fromarray(patches[code]).resize((px, px), Image.Resampling.NEAREST), (x0, y0))
            if px >= 10:
                d.rectangle([x0, y0, x0 + px - 1, y0 + px - 1], outline=(255, 255, 255))
        else:
            fill = code_colour(code) if code is not None else (200, 200, 200)
            d.rectangle([x0, y0, x0 + px - 1, y0 + px - 1], fill=fill, outline=(40, 40, 40) if px >= 6 else None)
            if code is not None and px >= 22:
                label = str(code)
                f = font(max(8, min(14, int(px / (0.62 * max(3, len(label)))))))
                d.text((x0 + px / 2, y0 + px / 2), label, fill=(0, 0, 0), font=f, anchor="mm")
        if (r, c) == (0, 0) and px >= 8:  # the anchor: smallest cell
            d.ellipse([x0 + 2, y0 + 2, x0 + 2 + px // 5, y0 + 2 + px // 5], fill=(255, 255, 255), outline=(0, 0, 0))
    return im


def _placeholder(text: str, tile: int = TILE) -> Image.Image:
    im = Image.new("RGB", (tile, tile), (228, 228, 228))
    d = ImageDraw.Draw(im)
    d.multiline_text((tile / 2, tile / 2), text, fill=MUTED, font=font(11), anchor="mm", align="center")
    return im


def header_lines(rank: int, card: Card) -> list[str]:
    if not card.learned:
        return [f"#{rank}  base code {card.id}", f"used {card.usage}", ""]
    a, b = card.pair
    dy, dx = card.offset
    first = f"#{rank}  id {card.id} = ({a}, {b})  u*=({dy},{dx})  {card.kind or ''}"
    second = f"used {card.usage}   {card.size} cells   F {card.frequency}   S {card.consistency:.2f}"
    if card.usage:
        canon = {True: "canonical", False: "not canonical", None: "canonical layout collides"}[card.canonical_matches]
        third = f"{card.n_shapes} shape{'s' if card.n_shapes != 1 else ''}, top {card.top_share:.0%} ({canon})"
    else:
        third = "unused on the sample: canonical shape"
    return [first, second, third]


def card_size(n_exemplars: int) -> tuple[int, int]:
    w = max(MIN_CARD, 2 * PAD + TILE + GAP + VARIANT + (TILE + GAP) * n_exemplars)
    return w, HEADER + TILE + 2 * PAD


def atlas_size(section_sizes: list[int], n_exemplars: int) -> tuple[int, int]:
    """(width, height) of an atlas whose sections hold these many cards."""
    cw, ch = card_size(n_exemplars)
    cols = max(1, min(max(section_sizes, default=1) or 1, (MAX_WIDTH - PAD) // (cw + PAD)))
    rows = sum(max(1, -(-n // cols)) for n in section_sizes) if section_sizes else 1
    return PAD + cols * (cw + PAD), TITLE + SECTION * len(section_sizes) + rows * (ch + PAD) + PAD


def render_atlas(sections: list[tuple[str, list[Card]]], title: str, n_exemplars: int, path: str | None = None,
                 patches: dict[int, np.ndarray] | None = None) -> Image.Image:
    """The whole atlas as one RGB image (written as PNG when `path` is given): a heading and a grid of
    cards per section, ranks counted within each section."""
    cw, ch = card_size(n_exemplars)
    width, height = atlas_size([len(c) for _, c in sections], n_exemplars)
    cols = max(1, (width - PAD) // (cw + PAD))
    im = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(im)
    d.text((PAD, 9), title, fill=INK, font=font(15))
    y = TITLE
    for heading, cards in sections:
        d.text((PAD, y + 5), heading, fill=INK, font=font(14))
        y += SECTION
        if not cards:
            d.text((PAD, y + 20), "no tokens of this kind", fill=MUTED, font=font(14))
        for i, card in enumerate(cards):
            _draw_card(im, d, card, i + 1, PAD + (i % cols) * (cw + PAD), y + (i // cols) * (ch + PAD), cw, ch,
                       n_exemplars, patches)
        y += max(1, -(-len(cards) // cols)) * (ch + PAD)
    if path:
        im.save(path, format="PNG", optimize=False)
    return im


def _draw_card(im, d, card: Card, rank: int, x: int, y: int, cw: int, ch: int, n_exemplars: int, patches) -> None:
    d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(255, 255, 255), outline=(215, 215, 210))
    for j, line in enumerate(header_lines(rank, card)):
        d.text((x + PAD, y + 5 + 15 * j), line, fill=INK if j == 0 else MUTED, font=font(12))
    ty = y + HEADER + PAD - 4
    im.paste(draw_shape(card.shapes[0], TILE, patches), (x + PAD, ty))
    vx = x + PAD + TILE + GAP
    for j, v in enumerate(card.shapes[1:3]):
        vy = ty + j * (VARIANT + 14)
        im.paste(draw_shape(v, VARIANT, patches), (vx, vy))
        d.text((vx, vy + VARIANT + 1), f"{v.share:.0%}", fill=MUTED, font=font(11))
    ex_x = vx + VARIANT + GAP
    for j in range(n_exemplars):
        ex = card.exemplars_ok[j] if j < len(card.exemplars_ok) else None
        tile = ex.crop if ex is not None else _placeholder(_why_missing(card))
        im.paste(tile, (ex_x + (TILE + GAP) * j, ty))


def _why_missing(card: Card) -> str:
    if not card.usage:
        return "unused on\nthe sample"
    if not card.exemplars:
        return "no source\nimage"
    bad = [e for e in card.exemplars if e.status != "ok"]
    return "no exemplar\n(image missing)" if bad else "no further\ninstance"
