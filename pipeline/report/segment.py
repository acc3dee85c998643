"""Encode grids and keep the segmentation: which instance owns each cell, and each instance's shape.

`BpeEncoder.encode` returns only (tokens, anchors); an instance's cells depend on where each Y
attached, so the atlas needs the encoder's `owner` / `nxt` arrays. This runs the encoder's own
kernel (same merges, same result) and keeps them, then summarises every instance in one numba
pass: size in cells, an order-free hash of its cells relative to the anchor (equal hashes =
equal shapes), and its bounding box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.encoder import BpeEncoder


@dataclass
class Segmented:
    """BpeEncoder output plus the per-cell maps; cells of grid g are [gstart[g], gstart[g+1])."""

    tokens: np.ndarray  # int32, anchor order within each grid
    anchors: np.ndarray  # int32, cell r * W + c within the grid
    offsets: np.ndarray  # int64, grid g's tokens are [offsets[g], offsets[g+1])
    owner: np.ndarray  # int32 per global cell: global cell of its instance's anchor
    nxt: np.ndarray  # int32 per global cell: next cell of the same instance, -1 at the end
    codes: np.ndarray  # int32 base codes per global cell
    gstart: np.ndarray
    heights: np.ndarray
    widths: np.ndarray

    def cells(self, g: int, anchor: int) -> list[tuple[int, int]]:
        """(dr, dc) of every cell of the instance anchored at `anchor` in grid g, relative to the anchor, sorted."""
        w = int(self.widths[g])
        gs = int(self.gstart[g])
        x = gs + int(anchor)
        if self.owner[x] != x:
            raise ValueError(f"cell {anchor} of grid {g} is not an anchor")
        ar, ac = divmod(int(anchor), w)
        out = []
        cell = x
        while cell != -1:
            r, c = divmod(cell - gs, w)
            out.append((r - ar, c - ac))
            cell = int(self.nxt[cell])
        return sorted(out)

    def grid_of_token(self) -> np.ndarray:
        """Grid index of every token (aligned with `tokens`)."""
        return np.repeat(np.arange(len(self.heights), dtype=np.int64), np.diff(self.offsets))


def segment(encoder: BpeEncoder, codes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Segmented:
    """`encoder.encode`, keeping which instance covers every cell."""
    enc, owner, nxt, gstart = encoder.encode_with_cells(codes, heights, widths)
    return Segmented(enc.tokens, enc.anchors, enc.offsets, owner, nxt, np.asarray(codes, np.int32), gstart,
                     np.asarray(heights, np.int32), np.asarray(widths, np.int32))


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _mix(v):
    """splitmix64 finaliser: a well-spread 64-bit image of one packed relative cell."""
    z = v + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _instance_table(owner, nxt, gstart, widths, n_tokens):
    size = np.zeros(n_tokens, np.int32)
    shape_hash = np.zeros(n_tokens, np.uint64)
    box = np.zeros((n_tokens, 3), np.int32)  # max dr, min dc, max dc (min dr is 0: the anchor is the smallest cell)
    k = 0
    for g in range(gstart.shape[0] - 1):
        gs = gstart[g]
        w = widths[g]
        for x in range(gs, gstart[g + 1]):
            if owner[x] != x:
                continue
            ar = (x - gs) // w
            ac = (x - gs) - ar * w
            h = np.uint64(0)
            n = 0
            mr, lc, hc = 0, 0, 0
            cell = x
            while cell != -1:
                r = (cell - gs) // w
                c = (cell - gs) - r * w
                dr = r - ar
                dc = c - ac
                h += _mix(np.uint64(dr * 4096 + dc + 2048))
                n += 1
                mr = max(mr, dr)
                lc = min(lc, dc)
                hc = max(hc, dc)
                cell = nxt[cell]
            size[k] = n
            shape_hash[k] = h
            box[k, 0] = mr
            box[k, 1] = lc
            box[k, 2] = hc
            k += 1
    return size, shape_hash, box


@dataclass
class InstanceTable:
    """Per token instance (aligned with `Segmented.tokens`): cells, shape hash, extent (rows, cols)."""

    size: np.ndarray  # int32 cells
    shape_hash: np.ndarray  # uint64, equal for equal sets of relative cells
    rows: np.ndarray  # int32 bounding-box height in cells
    cols: np.ndarray  # int32 bounding-box width in cells


def instance_table(seg: Segmented) -> InstanceTable:
    size, shape_hash, box = _instance_table(seg.owner, seg.nxt, seg.gstart, seg.widths, seg.tokens.shape[0])
    return InstanceTable(size, shape_hash, box[:, 0] + 1, box[:, 2] - box[:, 1] + 1)
