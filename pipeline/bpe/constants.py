"""Numbers every BPE kernel compiles in: grid limits, the neighbour table, id and offset packing.

Plain Python numbers and tuples, no numba, so light modules (the grid reader) can import the
limits. numba freezes these globals into the compiled kernels, so `pipeline/__init__.py` puts this
file in the numba cache key (numba: compiled in).

Adjacency is this one table: the contract's 4-neighbourhood as (dy, dx) steps. Every kernel loops
over it and sizes its buffers from MAX_NEIGHBOURS, so another adjacency is one edit here (plus
the contract's reference, which states the rule in its own words).
"""
from __future__ import annotations

NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (dy, dx): up, down, left, right
MAX_NEIGHBOURS = len(NEIGHBOURS)

# The steps to a larger cell number: every adjacency of two cells, seen once from its smaller cell.
FORWARD = tuple((dy, dx) for dy, dx in NEIGHBOURS if dy > 0 or (dy == 0 and dx > 0))
MAX_FORWARD = len(FORWARD)  # adjacent cell pairs per cell, at most (occurrences of single cells)


# Grids are at most MAX_SIDE a side; offsets are packed as dy * OFF_SPAN + (dx + OFF_BIAS).
MAX_SIDE = 1024
OFF_BIAS = 1024
OFF_SPAN = 2048
OFF_BITS = 21  # enough for any packed offset (dy >= 0 since anchors are ordered)
OFF_MASK = (1 << OFF_BITS) - 1

# Token ids (codes and merges) stay below 2**ID_BITS; a pair packs as a << ID_BITS | b.
ID_BITS = 21
MAX_ID = 1 << ID_BITS
ID_MASK = MAX_ID - 1
