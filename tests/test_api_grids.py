"""codes <-> tokens through `vbpe.VisualTokenizer`: lossless with the layout, ids-only decoding, id layout."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.vocab import Merge, Vocabulary
from pipeline.bpe.encoder import BpeEncoder
from tests.helpers.tokenizers import visual_tokenizer


def _vocab(V, merges):
    return Vocabulary(V, 1.0, 2, 0.0, merges=merges)


@st.composite
def grids(draw, V, max_side=9, max_n=4):
    shapes = draw(st.lists(st.tuples(st.integers(1, max_side), st.integers(1, max_side)), min_size=1, max_size=max_n))
    return [np.array(draw(st.lists(st.integers(0, V - 1), min_size=h * w, max_size=h * w)), np.int32).reshape(h, w)
            for h, w in shapes]


@st.composite
def learned(draw):
    """A vocabulary learned on some grids, and other grids to encode with it."""
    V = draw(st.integers(1, 5))
    train = draw(grids(V, max_side=8))
    merges, _, _ = learn_arrays(train, V, draw(st.integers(0, 30)), alpha=draw(st.sampled_from([0.0, 1.0, 5.0])))
    return _vocab(V, merges), train + draw(grids(V))


@st.composite
def arbitrary(draw):
    """Any valid vocabulary (pairs of defined ids, any offset a merge can have) and any grids."""
    V = draw(st.integers(1, 4))
    merges = []
    for k in range(draw(st.integers(0, 12))):
        a, b = draw(st.integers(0, V + k - 1)), draw(st.integers(0, V + k - 1))
        dy = draw(st.integers(0, 3))
        dx = draw(st.integers(1 if dy == 0 else -3, 3))
        merges.append(Merge(V + k, (a, b), 2, 1.0, 2.0, (dy, dx), [(dy, dx, 2)]))
    return _vocab(V, merges), draw(grids(V))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(learned(), arbitrary()))
def test_decode_grid_of_encode_grid_is_the_grid(case):
    vocab, gs = case
    tok = visual_tokenizer(vocab)
    encs = tok.encode_grids(gs, return_encoding=True)
    for g, enc in zip(gs, encs):
        assert np.array_equal(tok.decode_grid(enc), g)
        assert sorted(enc.cells.tolist()) == list(range(g.size))  # every cell once
        t, a = BpeEncoder(vocab).encode_grid(g)
        assert enc.tokens.tolist() == t.tolist() and enc.anchors.tolist() == a.tolist()
    assert [e.input_ids for e in encs] == tok.encode_grids(gs)  # the fast path gives the same ids


def test_ids_alone_can_be_ambiguous_and_the_layout_resolves_it():
    # t = (a, b) side by side, T = (t, t) stacked: in [[a, a], [b, b]] each t forms vertically instead
    vocab = _vocab(2, [Merge(2, (0, 1), 4, 1.0, 4.0, (0, 1), [(0, 1, 4)]),
                       Merge(3, (2, 2), 2, 1.0, 2.0, (1, 0), [(1, 0, 2)])])
    tok = visual_tokenizer(vocab)
    a, b = np.array([[0, 1], [0, 1]]), np.array([[0, 0], [1, 1]])
    ea, eb = tok.encode_grid(a), tok.encode_grid(b)
    assert ea.input_ids == eb.input_ids and ea.tokens.tolist() == [3] and ea.anchors.tolist() == eb.anchors.tolist()
    assert np.array_equal(tok.decode_grid(ea), a) and np.array_equal(tok.decode_grid(eb), b)
    # from ids alone: the layout every merge's u* gives
    assert np.array_equal(tok.decode_grid(ea.tokens, shape=(2, 2)), a)


def test_ids_alone_decode_text_like_grids_exactly():
    """On 1 x N grids (text) ids alone determine the codes, as in text BPE."""
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 3, (1, 40)) for _ in range(20)]
    merges, _, _ = learn_arrays(train, 3, 25, alpha=0.0)
    tok = visual_tokenizer(_vocab(3, merges))
    for g in train + [rng.integers(0, 3, (1, 33))]:
        enc = tok.encode_grid(g)
        assert np.array_equal(tok.decode_grid(enc.tokens, shape=g.shape), g)
        assert np.array_equal(tok.decode_grid(tok.image_tokens(enc.input_ids), shape=g.shape), g)


def test_llm_ids_follow_the_layout():
    rng = np.random.default_rng(1)
    train = [rng.integers(0, 6, (8, 8)) for _ in range(10)]
    merges, _, _ = learn_arrays(train, 6, 10, alpha=1.0)
    tok = visual_tokenizer(_vocab(6, merges))
    lay = tok.layout
    enc = tok.encode_grid(train[0])
    assert enc.input_ids[0] == lay.begin_image_id and enc.input_ids[-1] == lay.end_image_id
    assert enc.input_ids[1:-1] == [lay.code_offset + int(t) for t in enc.tokens]
    assert tok.image_tokens(enc.input_ids).tolist() == enc.tokens.tolist()
    assert tok.image_tokens([5, 7] + enc.input_ids + [9]).tolist() == enc.tokens.tolist()  # text around it
    with pytest.raises(ValueError, match="not a visual id"):
        tok.image_tokens([lay.begin_image_id, 3, lay.end_image_id])
    with pytest.raises(ValueError, match="outside"):
        tok.encode_grid(np.full((2, 2), 6))
    with pytest.raises(ValueError, match="not a vbpe id"):
        tok.decode_grid([tok.vocab.size])
