"""The report's analysis against independent computations: the slow reference learner's final
segmentation, encodings with truncated vocabularies, brute-force counts."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from pipeline.bpe import reference
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Merge, Vocabulary
from pipeline.codegrids import Grids
from pipeline.report import tokens as T
from pipeline.report.analyze import analyze, unpack_pos
from pipeline.report.sample import holdout_mask, key_hash, read_holdout
from pipeline.report.segment import instance_table, segment
from bench.synthetic import synthetic_grids
from tests.helpers.report import grids_from_array, learn_vocab, write_corpus

V = 6


@pytest.fixture(scope="module")
def small():
    """Two grid shapes, few codes (many repeats), a vocabulary the reference learner agrees with."""
    a = synthetic_grids(10, 8, 8, codebook_size=V, seed=3, n_motifs=4, noise=0.05).codes
    b = synthetic_grids(6, 5, 7, codebook_size=V, seed=4, n_motifs=4, noise=0.05).codes
    arrays = [g for g in a] + [g for g in b]
    codes = np.concatenate([g.reshape(-1) for g in arrays])
    heights = [g.shape[0] for g in arrays]
    widths = [g.shape[1] for g in arrays]
    vocab = learn_vocab(codes, heights, widths, V, 40, alpha=3.0, sigma=1.0)
    ref_merges, ref_state, _ = reference.learn(arrays, V, 40, alpha=3.0, sigma=1.0)
    return arrays, codes, np.array(heights, np.int32), np.array(widths, np.int32), vocab, ref_merges, ref_state


def test_helper_learner_matches_reference(small):
    _, _, _, _, vocab, ref_merges, _ = small
    assert len(vocab.merges) == len(ref_merges) == 40
    for m, r in zip(vocab.merges, ref_merges):
        assert (m.id, m.pair, m.frequency, m.offset) == (r.id, r.pair, r.frequency, r.offset)
        assert m.consistency == r.consistency


def test_segmentation_equals_reference_final_cells(small):
    arrays, codes, heights, widths, vocab, _, ref_state = small
    seg = segment(BpeEncoder(vocab), codes, heights, widths)
    tab = instance_table(seg)
    by_shape: dict[tuple, set[int]] = {}
    k = 0
    for g, ref in enumerate(ref_state):
        toks, anchors = ref.segmentation()
        lo, hi = seg.offsets[g], seg.offsets[g + 1]
        assert seg.tokens[lo:hi].tolist() == toks and seg.anchors[lo:hi].tolist() == anchors
        w = ref.width
        for anchor in anchors:
            ar, ac = divmod(anchor, w)
            expected = sorted((c // w - ar, c % w - ac) for c in ref.cells[anchor])
            assert seg.cells(g, anchor) == expected
            assert tab.size[k] == len(expected)
            assert tab.rows[k] == max(r for r, _ in expected) + 1
            assert tab.cols[k] == max(c for _, c in expected) - min(c for _, c in expected) + 1
            by_shape.setdefault(tuple(expected), set()).add(int(tab.shape_hash[k]))
            k += 1
    assert k == seg.tokens.shape[0]
    # equal shapes hash equal, different shapes differently
    assert all(len(h) == 1 for h in by_shape.values())
    assert len({next(iter(h)) for h in by_shape.values()}) == len(by_shape)
    assert any(len(s) >= 3 for s in by_shape)


def test_sizes_and_fired_counts_match_the_learner(small):
    _, codes, heights, widths, vocab, _, _ = small
    seg = segment(BpeEncoder(vocab), codes, heights, widths)
    sizes = T.token_sizes(vocab)
    assert np.array_equal(sizes[seg.tokens], instance_table(seg).size)
    usage = np.bincount(seg.tokens, minlength=vocab.size)
    # encoding the training grids replays the learner: merge k fires exactly `merged` times
    assert T.fired_per_merge(vocab, usage).tolist() == [m.merged for m in vocab.merges]
    curve = T.tokens_curve(vocab, usage, int(codes.size), len(heights))
    assert np.allclose(curve, vocab.tokens_per_grid())


def test_curve_on_unseen_grids_equals_truncated_encodings(small):
    _, _, _, _, vocab, _, _ = small
    other = synthetic_grids(7, 8, 8, codebook_size=V, seed=99, n_motifs=4, noise=0.2).codes
    codes = other.reshape(-1)
    h, w = np.full(7, 8), np.full(7, 8)
    usage = np.bincount(BpeEncoder(vocab).encode(codes, h, w).tokens, minlength=vocab.size)
    curve = T.tokens_curve(vocab, usage, codes.size, 7)
    for k in range(len(vocab.merges) + 1):
        prefix = dataclasses.replace(vocab, merges=vocab.merges[:k])
        tokens = BpeEncoder(prefix).encode(codes, h, w).tokens
        assert curve[k] == pytest.approx(tokens.shape[0] / 7), k
        # usage of every id under the prefix vocabulary, derived from the full encoding
        assert T.alive_after(vocab, usage, k).tolist() == np.bincount(tokens, minlength=V + k).tolist(), k


def _merge(k: int, a: int, b: int, dy: int, dx: int) -> Merge:
    return Merge(V + k, (a, b), 5, 1.0, 5.0, (dy, dx), [(dy, dx, 5)], 0)


def test_canonical_shape_by_hand():
    vocab = Vocabulary(V, 1.0, 2, 0.0, merges=[
        _merge(0, 1, 2, 0, 1),  # 6: [1 2]
        _merge(1, 6, 3, 1, 0),  # 7: [1 2] over [3 .]
        _merge(2, 7, 7, 0, 2),  # 8: two 7s side by side
        _merge(3, 6, 6, 0, 0),  # 9: impossible layout (same spot)
        _merge(4, 4, 5, 1, -1),  # 10: 5 below-left of 4
    ])
    assert T.canonical_shape(vocab, 2) == [(0, 0)]
    assert T.canonical_shape(vocab, 6) == [(0, 0), (0, 1)]
    assert T.canonical_shape(vocab, 7) == [(0, 0), (0, 1), (1, 0)]
    assert T.canonical_shape(vocab, 8) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 2)]
    assert T.canonical_shape(vocab, 9) is None
    assert T.canonical_shape(vocab, 10) == [(0, 0), (1, -1)]
    assert T.token_sizes(vocab).tolist() == [1] * V + [2, 3, 6, 4, 2]


def test_checkpoint_sizes():
    assert T.checkpoint_sizes(0, 8) == []
    assert T.checkpoint_sizes(1, 8) == [1]
    assert T.checkpoint_sizes(1000, 4) == [125, 250, 500, 1000]
    assert T.checkpoint_sizes(16384, 8)[0] == 128


def test_holdout_split_is_a_salted_key_hash():
    keys = [f"img-{i}" for i in range(4000)]
    h = key_hash(keys, "s")
    manual = [(int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, key=b"s").digest(), "big") >> 11) / 2**53
              for k in keys[:50]]
    assert np.allclose(h[:50], manual)
    m = holdout_mask(keys, 0.1, "s")
    assert 0.08 < m.mean() < 0.12
    assert holdout_mask(keys[::-1], 0.1, "s")[::-1].tolist() == m.tolist()  # order-free
    assert holdout_mask(keys, 0.1, "t").tolist() != m.tolist()  # the salt matters


def test_read_holdout_chunks_and_cap(tmp_path):
    codes = synthetic_grids(300, 4, 4, codebook_size=V, seed=5).codes
    g = grids_from_array(codes)
    from pipeline.codegrids import open_corpus

    corpus = open_corpus([write_corpus(str(tmp_path / "g.parquet"), g, V)])
    full = read_holdout(corpus, 0.5, "x", 10_000, chunk_rows=37, fingerprint=True)
    expect = [k for k, keep in zip(g.keys, holdout_mask(g.keys, 0.5, "x")) if keep]
    assert full.grids.keys == expect and full.in_split == len(expect)
    assert full.fingerprint_sum == g.fingerprint_sum()
    for i, k in enumerate(full.grids.keys):
        j = g.keys.index(k)
        assert np.array_equal(full.grids.grid(i), codes[j])
    capped = read_holdout(corpus, 0.5, "x", 20, chunk_rows=50)
    hashes = dict(zip(g.keys, key_hash(g.keys, "x")))
    smallest = sorted(expect, key=lambda k: hashes[k])[:20]
    assert sorted(capped.grids.keys) == sorted(smallest)
    assert capped.grids.keys == [k for k in expect if k in set(smallest)]  # corpus order kept


def test_analysis_does_not_depend_on_batch_size(small):
    _, codes, heights, widths, vocab, _, _ = small
    grids = Grids([f"k{i}" for i in range(len(heights))], heights, widths, codes)
    one = analyze(vocab, grids, batch_grids=1, exemplar_pool=3)
    big = analyze(vocab, grids, batch_grids=100, exemplar_pool=3)
    assert np.array_equal(one.usage, big.usage)
    for f in ("token", "shape_hash", "count", "first"):
        assert np.array_equal(getattr(one.shapes, f), getattr(big.shapes, f))
    for f in ("token", "priority", "pos"):
        assert np.array_equal(getattr(one.candidates, f), getattr(big.candidates, f))
    # brute force: usage, shape counts and first instance per (token, shape)
    seg = segment(BpeEncoder(vocab), codes, heights, widths)
    assert np.array_equal(one.usage, np.bincount(seg.tokens, minlength=vocab.size))
    groups: dict[tuple[int, tuple], list[tuple[int, int]]] = {}
    for g in range(len(heights)):
        for i in range(seg.offsets[g], seg.offsets[g + 1]):
            t, a = int(seg.tokens[i]), int(seg.anchors[i])
            if t >= V:
                groups.setdefault((t, tuple(seg.cells(g, a))), []).append((g, a))
    assert len(groups) == one.shapes.token.shape[0]
    for t in set(t for t, _ in groups):
        mine = {}
        for h, c, f in zip(*one.shapes_of(t)):
            g, a = unpack_pos(f)
            mine[tuple(seg.cells(g, a))] = (int(c), (g, a))
        theirs = {shape: (len(v), v[0]) for (tt, shape), v in groups.items() if tt == t}
        assert mine == theirs
        counts = one.shapes_of(t)[1]
        assert list(counts) == sorted(counts, reverse=True)
    # exemplar candidates: at most 3 per token, all real instances of it
    for t in np.unique(one.candidates.token):
        pool = one.candidates.of(int(t))
        assert 1 <= len(pool) <= 3 and len(pool) == min(3, one.usage[t])
        for p in pool:
            g, a = unpack_pos(p)
            assert a in seg.anchors[seg.offsets[g] : seg.offsets[g + 1]].tolist()


def test_read_holdout_counts_rejects(tmp_path):
    from pipeline.codegrids import open_corpus
    from tests.helpers.grids import write_raw

    rows = [{"key": f"k{i}", "height": 2, "width": 2, "codes": [1, 2, 3, 4]} for i in range(20)]
    rows += [{"key": "big", "height": 2, "width": 2, "codes": [1, 2, 3, 99]},
             {"key": "big2", "height": 2, "width": 2, "codes": [1, 2, 3, 77]},
             {"key": "short", "height": 2, "width": 2, "codes": [1, 2, 3]}]
    write_raw(tmp_path / "g.parquet", rows, codebook_size=16)
    s = read_holdout(open_corpus([str(tmp_path / "g.parquet")]), 1.0, "x", 100)
    assert (s.rows_read, s.rows_rejected, len(s.grids)) == (23, 3, 20)
    assert s.reject_reasons == {"code N outside [N, N)": 2, "codes has N values, expected height*width = N": 1}
