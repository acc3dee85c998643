"""The algorithm's shared pieces: one neighbour table, a numba-free grid reader, a cache key that
follows every kernel and every constant compiled into one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline import _numba_cache_dir
from pipeline.bpe import constants

REPO = Path(__file__).resolve().parent.parent


def test_neighbour_table_is_the_contracts_4_neighbourhood():
    assert sorted(constants.NEIGHBOURS) == [(-1, 0), (0, -1), (0, 1), (1, 0)]
    assert constants.MAX_NEIGHBOURS == 4
    # the forward half reaches every adjacent pair of cells once, from its smaller cell
    assert set(constants.FORWARD) == {(0, 1), (1, 0)} and constants.MAX_FORWARD == 2


def test_reading_grids_does_not_load_numba():
    code = "import sys, pipeline.codegrids; sys.exit(1 if 'numba' in sys.modules else 0)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env).returncode == 0


def test_numba_cache_key_follows_kernels_and_compiled_in_constants(tmp_path):
    (tmp_path / "k.py").write_text("@njit\ndef f(): pass\n")
    (tmp_path / "c.py").write_text('"""numba: compiled in"""\nX = 1\n')
    (tmp_path / "plain.py").write_text("Y = 1\n")
    key = _numba_cache_dir(tmp_path)
    (tmp_path / "plain.py").write_text("Y = 2\n")
    assert _numba_cache_dir(tmp_path) == key
    (tmp_path / "c.py").write_text('"""numba: compiled in"""\nX = 2\n')
    changed = _numba_cache_dir(tmp_path)
    assert changed != key
    (tmp_path / "k.py").write_text("@njit\ndef f(): return 1\n")
    assert _numba_cache_dir(tmp_path) != changed


def test_the_real_constants_module_is_in_the_cache_key():
    assert b"numba: compiled in" in (REPO / "pipeline" / "bpe" / "constants.py").read_bytes()


def test_neighbours_kernel_follows_the_table():
    """Every cell's neighbours on a grid of single-cell instances are exactly the table's in-bounds steps."""
    from pipeline.bpe.instances import init_instances, neighbours

    h, w = 4, 5
    owner, nxt, _ = init_instances(np.zeros(h * w, np.int32))
    mark = np.zeros(h * w, np.int64)
    out = np.empty(h * w, np.int32)
    for x in range(h * w):
        n = neighbours(owner, nxt, x, 0, w, h, mark, x + 1, out)
        r, c = divmod(x, w)
        want = {(r + dy) * w + c + dx for dy, dx in constants.NEIGHBOURS if 0 <= r + dy < h and 0 <= c + dx < w}
        assert set(out[:n].tolist()) == want and n == len(want)
