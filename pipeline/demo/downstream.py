"""What the demo does after quantizing.

PLACEHOLDER: the lead replaces the body of `run_downstream` with learn -> tokenize -> report.
For now it only reads the code grids back and counts them, so the demo has honest figures.
"""
from __future__ import annotations

import glob
import os
from typing import Any

import pyarrow.parquet as pq

from schemas.grids import CODEBOOK_SIZE_KEY


def run_downstream(grids_dir: str, out_dir: str) -> dict[str, Any]:
    """Placeholder for learn / tokenize / report: counts grids, grid shapes and codes in use."""
    files = sorted(glob.glob(os.path.join(grids_dir, "*.parquet")))
    rows = 0
    shapes: set[tuple[int, int]] = set()
    used: set[int] = set()
    codebook = None
    for f in files:
        t = pq.read_table(f, columns=["height", "width", "codes"])
        codebook = int(t.schema.metadata[CODEBOOK_SIZE_KEY]) if t.schema.metadata else codebook
        rows += t.num_rows
        shapes.update(zip(t.column("height").to_pylist(), t.column("width").to_pylist()))
        for codes in t.column("codes").to_pylist():
            used.update(codes)
    return {
        "stage": "downstream placeholder (counts grids; learn/tokenize/report not wired yet)",
        "grid_files": len(files),
        "grids": rows,
        "grid_shapes": sorted(shapes),
        "codebook_size": codebook,
        "codes_used": len(used),
    }
