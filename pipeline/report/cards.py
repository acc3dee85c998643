"""Atlas entries: for each chosen token, its most common shape with the base codes on it, how many
shapes it takes, its canonical (mode-offset) shape, and exemplar crops from the source images."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.codegrids import Grids
from pipeline.report.analyze import Analysis, segment_grids, unpack_pos
from pipeline.report.images import crop_instance, find_images, preprocess
from pipeline.report.kinds import KINDS, merge_kinds
from pipeline.report.tokens import canonical_shape
from schemas.base import StorageOptions

VARIANTS = 3  # shapes kept per token: the most common and the next ones


@dataclass
class Exemplar:
    key: str
    source: str | None
    anchor: int  # cell r * W + c of the instance in its grid
    status: str  # "ok" or why there is no crop
    crop: Image.Image | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "anchor": self.anchor, "status": self.status}


@dataclass
class Shape:
    cells: list[tuple[int, int]]  # relative to the anchor, sorted
    codes: list[int] | None  # base code on each cell, None when not observed
    share: float | None  # of the token's instances on the sample


@dataclass
class Card:
    id: int
    learned: bool
    pair: tuple[int, int] | None
    offset: tuple[int, int] | None
    frequency: int | None
    consistency: float | None
    usage: int
    size: int  # cells
    n_shapes: int  # distinct shapes seen on the sample
    shapes: list[Shape]  # most common first (the canonical shape alone when the token is unused)
    canonical: list[tuple[int, int]] | None
    exemplars: list[Exemplar] = field(default_factory=list)
    kind: str | None = None  # pipeline.report.kinds.KINDS for learned ids, None for base codes

    @property
    def cells(self) -> list[tuple[int, int]]:
        return self.shapes[0].cells

    @property
    def codes(self) -> list[int] | None:
        return self.shapes[0].codes

    @property
    def top_share(self) -> float | None:
        return self.shapes[0].share

    @property
    def exemplars_ok(self) -> list[Exemplar]:
        return [e for e in self.exemplars if e.crop is not None]

    @property
    def canonical_matches(self) -> bool | None:
        return None if self.canonical is None or not self.usage else self.canonical == self.cells

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "learned": self.learned, "pair": self.pair, "offset": self.offset,
            "frequency": self.frequency, "consistency": self.consistency, "usage": self.usage, "size": self.size,
            "distinct_shapes": self.n_shapes, "top_shape_share": self.top_share,
            "top_shape": [list(c) for c in self.cells], "codes": self.codes,
            "shape_variants": [{"cells": [list(c) for c in v.cells], "codes": v.codes, "share": v.share}
                               for v in self.shapes],
            "canonical_shape": None if self.canonical is None else [list(c) for c in self.canonical],
            "top_shape_is_canonical": self.canonical_matches, "kind": self.kind,
            "exemplars": [e.to_json() for e in self.exemplars],
        }


def _most_used(ids: np.ndarray, usage: np.ndarray, n: int) -> list[int]:
    order = np.lexsort((ids, -usage[ids]))
    return [int(i) for i in ids[order[:n]]]


def choose_tokens(vocab: Vocabulary, usage: np.ndarray, n: int) -> list[tuple[str, list[int]]]:
    """Atlas sections: the most used multi-code tokens and the most used same-code (flat) tokens, half of
    `n` each (a kind with fewer tokens leaves its places to the other); ties: smaller id. Base codes when
    there are no merges."""
    V = vocab.codebook_size
    if not vocab.merges:
        return [("most used base codes (the vocabulary has no merges)", _most_used(np.arange(V), usage, n))]
    kinds = merge_kinds(vocab)
    multi = V + np.flatnonzero(kinds != 0)
    flat = V + np.flatnonzero(kinds == 0)
    n_multi = min(len(multi), max(n - len(flat), n // 2 + n % 2))
    return [("multi-code tokens (mixed shapes and repeats), most used", _most_used(multi, usage, n_multi)),
            ("same-code tokens (flat runs of one code), most used", _most_used(flat, usage, n - n_multi))]


def build_cards(vocab: Vocabulary, analysis: Analysis, grids: Grids, encoder: BpeEncoder, ids: list[int],
                sizes: np.ndarray, exemplars: int, shards: list[str], image_size: int, resample: str,
                options: StorageOptions | None = None) -> tuple[list[Card], dict[str, Any]]:
    """Cards for `ids`, and a note on the exemplar lookup (shards scanned, images missing, ...)."""
    V = vocab.codebook_size
    canon_cache: dict[int, list[tuple[int, int]] | None] = {}
    reps: dict[int, list[tuple[int, int, float]]] = {}  # id -> (grid, anchor, share) of its most common shapes
    n_shapes: dict[int, int] = {}
    for t in ids:
        if t >= V and analysis.usage[t] > 0:
            _, counts, firsts = analysis.shapes_of(t)
            total = float(counts.sum())
            reps[t] = [(*unpack_pos(f), float(c) / total) for c, f in zip(counts[:VARIANTS], firsts[:VARIANTS])]
            n_shapes[t] = len(counts)
    pools = {t: [unpack_pos(p) for p in analysis.candidates.of(t)] for t in ids} if exemplars and shards else {}
    needed = [g for r in reps.values() for g, _, _ in r] + [g for pool in pools.values() for g, _ in pool]
    segs = segment_grids(encoder, grids, needed)

    def cells_of(g: int, anchor: int) -> list[tuple[int, int]]:
        seg, j = segs[g]
        return seg.cells(j, anchor)

    def shape_at(g: int, anchor: int, share: float) -> Shape:
        cells = cells_of(g, anchor)
        grid = grids.grid(g)
        ar, ac = divmod(anchor, int(grids.widths[g]))
        return Shape(cells, [int(grid[ar + dr, ac + dc]) for dr, dc in cells], share)

    kinds = merge_kinds(vocab)
    cards = []
    for t in ids:
        m = vocab.merges[t - V] if t >= V else None
        canon = canonical_shape(vocab, t, canon_cache)
        if t < V:
            shapes, count = [Shape([(0, 0)], [t], 1.0)], 1
        elif t in reps:
            shapes, count = [shape_at(*r) for r in reps[t]], n_shapes[t]
        else:
            shapes, count = [Shape(canon or [], None, None)], 0
        cards.append(Card(t, t >= V, m.pair if m else None, m.offset if m else None, m.frequency if m else None,
                          m.consistency if m else None, int(analysis.usage[t]), int(sizes[t]), count, shapes, canon,
                          kind=KINDS[kinds[t - V]] if t >= V else None))
    note = _attach_exemplars(cards, pools, grids, cells_of, exemplars, shards, image_size, resample, options)
    return cards, note


def _attach_exemplars(cards: list[Card], pools: dict[int, list[tuple[int, int]]], grids: Grids, cells_of,
                      k: int, shards: list[str], image_size: int, resample: str,
                      options: StorageOptions | None) -> dict[str, Any]:
    if not k:
        return {"status": "exemplars disabled (exemplars: 0)"}
    if not shards:
        return {"status": "no source images: pass --shards to draw exemplar crops"}
    sources = grids.sources or [None] * len(grids)
    requests = sorted({(grids.keys[g], sources[g]) for pool in pools.values() for g, _ in pool},
                      key=lambda r: (r[0], r[1] or ""))
    lookup = find_images(shards, requests, options=options)
    prepared: dict[tuple[str, str | None], Image.Image | str] = {}
    for card in cards:
        for g, anchor in pools.get(card.id, []):
            if sum(e.status == "ok" for e in card.exemplars) >= k:
                break
            req = (grids.keys[g], sources[g])
            if req not in prepared:
                if req in lookup.missing:
                    prepared[req] = lookup.missing[req]
                else:
                    try:
                        prepared[req] = preprocess(lookup.images[req], image_size, resample)
                    except Exception as err:  # a corrupt image costs one crop, not the report
                        prepared[req] = f"image unreadable: {type(err).__name__}: {err}"
            img = prepared[req]
            ex = Exemplar(req[0], req[1], anchor, "ok" if isinstance(img, Image.Image) else img)
            if isinstance(img, Image.Image):
                h, w = int(grids.heights[g]), int(grids.widths[g])
                ar, ac = divmod(anchor, w)
                cells = [(ar + dr, ac + dc) for dr, dc in cells_of(g, anchor)]
                ex.crop = crop_instance(img, cells, h, w, tile=128)
            card.exemplars.append(ex)
    ok = sum(e.status == "ok" for c in cards for e in c.exemplars)
    failed = [e for c in cards for e in c.exemplars if e.status != "ok"]
    return {"status": "ok", "shards": len(shards), "shards_scanned": lookup.shards_scanned,
            "shard_errors": lookup.shard_errors, "images_requested": len(requests),
            "images_found": len(lookup.images), "crops": ok, "no_exemplar": len(failed),
            "no_exemplar_reasons": sorted({e.status for e in failed})[:20]}
