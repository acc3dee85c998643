"""The fast learner and encoder against the slow reference written from the contract (docs/bpe.md)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.bpe import reference as R
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.vocab import Vocabulary


@st.composite
def corpora(draw, max_side=7):
    V = draw(st.integers(1, 5))
    shapes = draw(st.lists(st.tuples(st.integers(1, max_side), st.integers(1, max_side)), min_size=1, max_size=3))
    grids = [np.array(draw(st.lists(st.integers(0, V - 1), min_size=h * w, max_size=h * w)), np.int32).reshape(h, w)
             for h, w in shapes]
    return V, grids


def _records(merges):
    return [(tuple(m.pair), m.frequency, m.consistency, m.priority, tuple(m.offset), [tuple(h) for h in m.histogram])
            for m in merges]


def _vocab(V, merges, alpha=0.0):
    return Vocabulary(V, 1.0, 2, alpha, merges=merges)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    corpus=corpora(),
    n_merges=st.integers(1, 25),
    alpha=st.sampled_from([0.0, 0.5, 3.0, None]),
    sigma=st.sampled_from([0.3, 1.0, 2.5]),
    min_frequency=st.integers(1, 3),
    split=st.booleans(),
    workers=st.integers(1, 4),
)
def test_learner_matches_reference(corpus, n_merges, alpha, sigma, min_frequency, split, workers):
    """Any split of the grids (shards, workers) and of the pair statistics (one partition per worker)."""
    V, grids = corpus
    alpha_rel = 0.2 if alpha is None else None
    ref, ref_state, ref_alpha = R.learn(grids, V, n_merges, alpha=alpha, alpha_rel=alpha_rel, sigma=sigma,
                                        min_frequency=min_frequency)
    got, group, got_alpha = learn_arrays(grids, V, n_merges, alpha=alpha, alpha_rel=alpha_rel, sigma=sigma,
                                         min_frequency=min_frequency, shard_cells=1 if split else 1 << 20,
                                         workers=workers)
    assert got_alpha == ref_alpha
    assert _records(got) == [(m.pair, m.frequency, m.consistency, m.priority, m.offset, m.histogram) for m in ref]
    tokens, anchors, offsets = group.segmentation()
    enc = BpeEncoder(_vocab(V, got, got_alpha))
    for i, g in enumerate(ref_state):
        want_t, want_a = g.segmentation()
        assert tokens[offsets[i]:offsets[i + 1]].tolist() == want_t
        assert anchors[offsets[i]:offsets[i + 1]].tolist() == want_a
        # the contract's invariant: encoding a training grid gives the learner's final segmentation
        t, a = enc.encode_grid(grids[i])
        assert t.tolist() == want_t and a.tolist() == want_a
    assert sum(m.merged for m in got) == sum(g.size for g in grids) - len(tokens)


@settings(max_examples=150, deadline=None)
@given(train=corpora(), test=corpora(max_side=9), n_merges=st.integers(0, 20))
def test_encoder_matches_sequential_application(train, test, n_merges):
    V, grids = train
    merges, _, _ = learn_arrays(grids, V, n_merges, alpha=1.0)
    enc = BpeEncoder(_vocab(V, merges))
    Vt, test_grids = test
    for g in test_grids:
        g = np.minimum(g, V - 1)
        t, a = enc.encode_grid(g)
        want = R.encode(g, [(m.pair[0], m.pair[1], m.id, m.offset) for m in merges])
        assert (t.tolist(), a.tolist()) == want


def classic_text_bpe(seqs: list[list[int]], V: int, n: int) -> list[tuple[int, int]]:
    """Textbook BPE over whole sequences: count overlapping pairs, take the most frequent (then the
    smaller pair), replace left to right; pairs seen fewer than twice never merge."""
    seqs = [list(s) for s in seqs]
    out = []
    for k in range(n):
        counts = Counter(p for s in seqs for p in zip(s, s[1:]))
        eligible = [(c, p) for p, c in counts.items() if c >= 2]
        if not eligible:
            break
        _, pair = max(eligible, key=lambda cp: (cp[0], -cp[1][0], -cp[1][1]))
        new = V + k
        for j, s in enumerate(seqs):
            merged, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(s[i])
                    i += 1
            seqs[j] = merged
        out.append(pair)
    return out


@settings(max_examples=120, deadline=None)
@given(
    V=st.integers(1, 4),
    seqs=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=30), min_size=1, max_size=4),
    vertical=st.booleans(),
    n=st.integers(1, 30),
)
def test_one_row_grids_are_text_bpe(V, seqs, vertical, n):
    seqs = [[c % V for c in s] for s in seqs]
    grids = [np.array(s, np.int32).reshape((-1, 1) if vertical else (1, -1)) for s in seqs]
    got, _, _ = learn_arrays(grids, V, n, alpha=0.0)
    assert [m.pair for m in got] == classic_text_bpe(seqs, V, n)
    assert all(m.consistency == 1.0 for m in got)


def test_aaa_merges_to_aa_a():
    merges, group, _ = learn_arrays([np.zeros((1, 3), np.int32), np.zeros((1, 3), np.int32)], 1, 1, alpha=0.0)
    assert merges[0].pair == (0, 0) and merges[0].frequency == 4
    tokens, anchors, _ = group.segmentation()
    assert tokens.tolist() == [1, 0, 1, 0] and anchors.tolist() == [0, 2, 0, 2]


def test_planted_motifs_are_rebuilt_first():
    """Multi-cell shapes with their own codes, planted in noise: the first merges rebuild them."""
    rng = np.random.default_rng(7)
    V, noise_codes = 64, 32
    motifs = [  # (cells relative to the top-left, codes) -- an L, a bar, a square
        ([(0, 0), (1, 0), (1, 1)], [32, 33, 34]),
        ([(0, 0), (0, 1), (0, 2)], [40, 41, 42]),
        ([(0, 0), (0, 1), (1, 0), (1, 1)], [50, 51, 52, 53]),
    ]
    grids, placed = [], []
    for _ in range(60):
        g = rng.integers(0, noise_codes, size=(16, 16)).astype(np.int32)
        spots = []
        for by in range(0, 15, 4):
            for bx in range(0, 15, 4):
                m = int(rng.integers(0, len(motifs)))
                cells, codes = motifs[m]
                for (dy, dx), code in zip(cells, codes):
                    g[by + dy, bx + dx] = code
                spots.append((m, by, bx))
        grids.append(g)
        placed.append(spots)
    budget = sum(len(c) - 1 for c, _ in motifs)
    merges, group, _ = learn_arrays(grids, V, budget, alpha_rel=0.01)
    assert all(min(m.pair) >= noise_codes for m in merges), "a background pair was merged before the motifs"
    enc = BpeEncoder(_vocab(V, merges))
    for g, spots in zip(grids, placed):
        tokens, anchors = enc.encode_grid(g)
        by_anchor = dict(zip(anchors.tolist(), tokens.tolist()))
        for m, by, bx in spots:
            cells, _ = motifs[m]
            anchor = by * 16 + bx
            assert by_anchor[anchor] >= V, "motif not merged into one token"
            for dy, dx in cells[1:]:
                assert (by + dy) * 16 + bx + dx not in by_anchor, "a motif cell is still its own token"


def test_alpha_prefers_consistent_pairs():
    """Equal F, one pair always horizontal and one mixed: with alpha > 0 the consistent one wins."""
    row = np.array([[0, 1, 2, 3]], np.int32)  # (0,1) and (2,3) horizontal
    col = np.array([[2], [3]], np.int32)  # (2,3) vertical
    grids = [row, row, row, col, np.array([[0, 1]], np.int32)]
    # F(0,1) = 4 horizontal; F(2,3) = 3 horizontal + 1 vertical
    freq_only, _, _ = learn_arrays(grids, 4, 1, alpha=0.0)
    assert freq_only[0].pair == (0, 1)
    tie = [row, row, row, col]  # F(0,1) = 3 (consistent), F(2,3) = 4 (mixed)
    assert learn_arrays(tie, 4, 1, alpha=0.0)[0][0].pair == (2, 3)
    spatial, _, _ = learn_arrays(tie, 4, 1, alpha=10.0)
    assert spatial[0].pair == (0, 1) and spatial[0].consistency == 1.0


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_consistency_bounds(sigma):
    merges, _, _ = learn_arrays([np.random.default_rng(1).integers(0, 3, (8, 8))], 3, 10, sigma=sigma, alpha=0.0)
    for m in merges:
        assert 0.0 < m.consistency <= 1.0
        assert (m.consistency == 1.0) == (len(m.histogram) == 1)
        assert m.frequency == sum(c for _, _, c in m.histogram)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    V=st.integers(1, 2),
    shape=st.tuples(st.integers(4, 10), st.integers(4, 10)),
    seed=st.integers(0, 2**32 - 1),
    n_merges=st.integers(10, 40),
    sigma=st.sampled_from([0.5, 2.0]),
)
def test_large_instances_match_reference(V, shape, seed, n_merges, sigma):
    """Few codes and many merges grow big instances, where partner ties (equidistant Y) occur."""
    rng = np.random.default_rng(seed)
    grids = [rng.integers(0, V, size=shape).astype(np.int32) for _ in range(2)]
    ref, ref_state, _ = R.learn(grids, V, n_merges, alpha=1.0, sigma=sigma, min_frequency=1)
    got, group, _ = learn_arrays(grids, V, n_merges, alpha=1.0, sigma=sigma, min_frequency=1)
    assert [(m.pair, m.offset, m.frequency) for m in got] == [(m.pair, m.offset, m.frequency) for m in ref]
    tokens, anchors, _ = group.segmentation()
    assert tokens.tolist() == [t for g in ref_state for t in g.segmentation()[0]]
    assert anchors.tolist() == [a for g in ref_state for a in g.segmentation()[1]]


def test_in_memory_api_refuses_bad_grids():
    from schemas.base import InputError

    with pytest.raises(InputError, match="outside"):
        learn_arrays([np.array([[0, 5]])], 4, 1)
    with pytest.raises(InputError, match="shape"):
        learn_arrays([np.zeros(3, np.int32)], 4, 1)


def test_large_codebooks_match_reference():
    """V > 2**15 takes the argsort path for base-pair places instead of packed sorting."""
    rng = np.random.default_rng(3)
    V = 40000
    grids = [rng.choice([5, 39999, 20000, 7], size=(6, 7)).astype(np.int32) for _ in range(3)]
    ref, ref_state, _ = R.learn(grids, V, 15, alpha=1.0)
    got, group, _ = learn_arrays(grids, V, 15, alpha=1.0)
    assert [(m.pair, m.offset, m.frequency) for m in got] == [(m.pair, m.offset, m.frequency) for m in ref]
    assert group.segmentation()[0].tolist() == [t for g in ref_state for t in g.segmentation()[0]]


def test_any_split_of_grids_and_pairs_gives_the_same_vocabulary():
    """Workers (one statistics partition each) and shards (several per worker) are independent splits:
    none of them changes a merge, a float or the final segmentation."""
    rng = np.random.default_rng(11)
    grids = [rng.integers(0, 24, size=(12, 12)).astype(np.int32) for _ in range(60)]
    one, g1, _ = learn_arrays(grids, 24, 150, alpha_rel=0.05, workers=1)
    for workers, shard_cells in ((2, 1 << 20), (3, 1024), (5, 2000), (7, 1)):
        got, g, _ = learn_arrays(grids, 24, 150, alpha_rel=0.05, workers=workers, shard_cells=shard_cells)
        assert _records(got) == _records(one), (workers, shard_cells)
        assert [m.merged for m in got] == [m.merged for m in one]
        for a, b in zip(g.segmentation(), g1.segmentation()):
            assert np.array_equal(a, b)
    assert len(one) == 150 and len({(m.pair, m.offset) for m in one}) > 100
