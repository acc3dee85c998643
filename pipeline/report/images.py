"""Source images for exemplar crops: find a grid's image in WebDataset shards, preprocess it as the
quantizer did, and map grid cells to pixel boxes.

The quantizer resizes the shortest side to R and centre-crops R x R, so cell (r, c) of an h x w
grid covers pixels [r*R/h, (r+1)*R/h) x [c*R/w, (c+1)*R/w) of that square. Anything that goes
wrong with one image (missing key, unreadable shard, corrupt bytes) becomes a recorded reason,
never an exception: an atlas without a crop is still an atlas.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from pipeline import storage
from pipeline.ingest.images import ImageLimits, decode_rgb
from pipeline.ingest.preprocess import ImageSpec, resize_crop
from schemas.base import StorageOptions

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_name(name: str) -> tuple[str, str]:
    """WebDataset naming: the key runs to the first dot of the file name; the rest is the field."""
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2).lower()) if m else (name, "")


def canonical(url: str) -> str:
    """Shard identity as the quantizer records it in the grids' `source` column."""
    return url if storage.is_remote(url) else os.path.abspath(url)


def preprocess(data: bytes, size: int, resample: str = "bicubic") -> Image.Image:
    """Image bytes -> the quantizer's size x size RGB input, by the quantizer's own decode and crop.

    Only the decompression-bomb guard applies: an image that reached the grids already passed the
    quantizer's size checks, and a crop is wanted even for one the checks would now refuse.
    """
    rgb = decode_rgb(data, ImageLimits(min_side=1, max_aspect=float("inf")), shortest_side=size)
    return Image.fromarray(resize_crop(rgb, ImageSpec(size, resample)))


def cell_box(r: int, c: int, h: int, w: int, size: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of cell (r, c) of an h x w grid on the size x size input."""
    return (c * size / w, r * size / h, (c + 1) * size / w, (r + 1) * size / h)


@dataclass
class Lookup:
    """Result of a shard scan: image bytes per request, or why there are none."""

    images: dict[tuple[str, str | None], bytes] = field(default_factory=dict)
    missing: dict[tuple[str, str | None], str] = field(default_factory=dict)
    shard_errors: dict[str, str] = field(default_factory=dict)
    shards_scanned: int = 0


def _scan(url: str, wanted: set[str], max_member_bytes: int, options: StorageOptions | None) -> dict[str, bytes]:
    """Image bytes of the wanted keys found in one tar shard (first image member per key)."""
    found: dict[str, bytes] = {}
    fs, path = storage.get_fs(url, options)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if key not in wanted or key in found or ext not in IMAGE_EXTENSIONS or member.size > max_member_bytes:
                continue
            fh = tar.extractfile(member)
            if fh is not None:
                found[key] = fh.read()
            if len(found) == len(wanted):
                break
    return found


def find_images(shards: list[str], requests: list[tuple[str, str | None]], max_member_bytes: int = 64 << 20,
                options: StorageOptions | None = None) -> Lookup:
    """Find (key, source) requests in `shards`. A request whose source is one of the shards is looked
    up there only (keys may repeat across shards); others match the first shard holding the key."""
    out = Lookup()
    urls = [canonical(u) for u in shards]
    by_shard: dict[str, set[str]] = {}
    anywhere: set[str] = set()
    for key, source in requests:
        if source is not None and canonical(source) in urls:
            by_shard.setdefault(canonical(source), set()).add(key)
        else:
            anywhere.add(key)
    targeted: dict[tuple[str, str], bytes] = {}
    found_anywhere: dict[str, bytes] = {}
    order = [u for u in urls if u in by_shard] + [u for u in urls if u not in by_shard]
    for url in order:
        wanted = set(by_shard.get(url, set())) | (anywhere - set(found_anywhere))
        if not wanted:
            continue
        out.shards_scanned += 1
        try:
            hits = _scan(url, wanted, max_member_bytes, options)
        except Exception as err:  # unreadable shard: record, go on with the others
            out.shard_errors[url] = f"{type(err).__name__}: {err}"
            hits = {}
        for key, data in hits.items():
            if key in by_shard.get(url, ()):
                targeted[(url, key)] = data
            if key in anywhere and key not in found_anywhere:
                found_anywhere[key] = data
    for key, source in requests:
        src = canonical(source) if source is not None else None
        data = targeted.get((src, key)) if src in by_shard else found_anywhere.get(key)
        if data is not None:
            out.images[(key, source)] = data
        else:
            where = f"shard {src}" if src in by_shard else f"any of {len(urls)} shard(s)"
            reason = f"no image for key {key!r} in {where}"
            if src in out.shard_errors:
                reason += f" (shard unreadable: {out.shard_errors[src]})"
            out.missing[(key, source)] = reason
    return out


def _window(lo: int, hi: int, margin: int, min_cells: int, n: int) -> tuple[int, int]:
    """[lo - margin, hi + margin], widened (centred) to at least min_cells, shifted to fit [0, n)."""
    lo, hi = lo - margin, hi + margin
    extra = min_cells - (hi - lo + 1)
    if extra > 0:
        lo -= extra // 2
        hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > n - 1:
        lo, hi = max(0, lo - (hi - (n - 1))), n - 1
    return lo, hi


def crop_instance(image: Image.Image, cells: list[tuple[int, int]], h: int, w: int, tile: int,
                  margin: int = 1, min_cells: int = 5, outline: tuple[int, int, int] = (255, 45, 85)) -> Image.Image:
    """A tile x tile crop around an instance: its cells (absolute (r, c)) outlined, the context dimmed.

    The window shows at least `margin` cells of context and `min_cells` cells per side, so a
    two-cell token is seen in its surroundings rather than as a blur.
    """
    size = image.size[0]
    rs = [r for r, _ in cells]
    cs = [c for _, c in cells]
    r0, r1 = _window(min(rs), max(rs), margin, min_cells, h)
    c0, c1 = _window(min(cs), max(cs), margin, min_cells, w)
    x0, y0, _, _ = cell_box(r0, c0, h, w, size)
    _, _, x1, y1 = cell_box(r1, c1, h, w, size)
    crop = image.crop((round(x0), round(y0), round(x1), round(y1)))
    scale = tile / max(crop.size)
    nw, nh = max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))
    crop = crop.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    px = crop.size[0] / (c1 - c0 + 1)  # pixels per cell in the tile
    py = crop.size[1] / (r1 - r0 + 1)
    inside = Image.new("L", crop.size, 0)
    di = ImageDraw.Draw(inside)
    for r, c in cells:
        di.rectangle([(c - c0) * px, (r - r0) * py, (c - c0 + 1) * px - 1, (r - r0 + 1) * py - 1], fill=255)
    dim = Image.blend(crop, Image.new("RGB", crop.size, (0, 0, 0)), 0.5)
    crop = Image.composite(crop, dim, inside)
    draw = ImageDraw.Draw(crop)
    cellset = set(cells)
    lw = max(1, round(min(px, py) / 12))
    for r, c in cells:
        x, y = (c - c0) * px, (r - r0) * py
        if (r - 1, c) not in cellset:
            draw.line([(x, y), (x + px, y)], fill=outline, width=lw)
        if (r + 1, c) not in cellset:
            draw.line([(x, y + py - 1), (x + px, y + py - 1)], fill=outline, width=lw)
        if (r, c - 1) not in cellset:
            draw.line([(x, y), (x, y + py)], fill=outline, width=lw)
        if (r, c + 1) not in cellset:
            draw.line([(x + px - 1, y), (x + px - 1, y + py)], fill=outline, width=lw)
    canvas = Image.new("RGB", (tile, tile), (24, 24, 24))
    canvas.paste(crop, ((tile - crop.size[0]) // 2, (tile - crop.size[1]) // 2))
    return canvas



def quantizer_input(grid_files: list[str], options: StorageOptions | None = None) -> tuple[int, str] | None:
    """(R, resample) from the quantize manifest beside the grids (`<out>/grids/*.parquet`, `<out>/manifest.json`)."""
    seen = set()
    for path in grid_files:
        parent = posixpath.dirname(posixpath.dirname(path.rstrip("/")))
        manifest = storage.join(parent, "manifest.json") if parent else "manifest.json"
        if manifest in seen:
            continue
        seen.add(manifest)
        try:
            if not storage.exists(manifest, options):
                continue
            doc = json.loads(storage.read_text(manifest, options))
            q = doc.get("quantizer", {}) if str(doc.get("format", "")).startswith("vbpe.quantize.manifest") else {}
            if q.get("image_size"):
                return int(q["image_size"]), str(q.get("resample") or "bicubic")
        except (OSError, ValueError):
            continue
    return None
