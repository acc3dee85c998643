"""What a code looks like: its pixels through the quantizer's decoder, for drawing tokens in the atlas.

A code's picture is the centre cell of a decoded 3 x 3 grid filled with that code: for k-means this is
exactly its centroid patch; for a VQ-GAN's convolutional decoder the centre cell is the one least
affected by the grid's border, so it shows the code as it looks inside a region of itself.
"""
from __future__ import annotations

import numpy as np

SIDE = 3


def code_patches(tokenizer, codes) -> dict[int, np.ndarray]:
    """code -> (p, p, 3) uint8 patch, for the given codes (decoded in batches)."""
    codes = sorted({int(c) for c in codes})
    if not codes:
        return {}
    grids = np.repeat(np.array(codes, np.int64)[:, None, None], SIDE * SIDE, axis=1).reshape(-1, SIDE, SIDE)
    pixels = tokenizer.decode_codes_batch(grids)
    ph, pw = pixels.shape[1] // SIDE, pixels.shape[2] // SIDE
    return {c: pixels[i, ph:2 * ph, pw:2 * pw].copy() for i, c in enumerate(codes)}
