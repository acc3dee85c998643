"""The learner's memory savers keep the statistics exact: in-place table resizing, packed words
(widened as ids and offsets grow, large counts in the overflow table), the base pair filter of the
first count, and dropping pairs that can no longer merge."""
from __future__ import annotations

import numpy as np
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.bpe.constants import OFF_BITS
from pipeline.bpe.hashtable import EMPTY
from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.pair_filter import PairFilter, add_saturating, combine, join_slices, pack_keep, slice_bounds, usable
from pipeline.bpe.shard import Deltas, GridShards
from pipeline.bpe.stats import Stats
from pipeline.bpe.worker import LearnerWorker


def _entries(stats: Stats) -> dict[int, int]:
    return stats.entries()


def _as_reference(merges) -> list:
    return [(tuple(m.pair), m.frequency, m.priority, tuple(m.offset)) for m in merges]


def _reference_merges(ref) -> list:
    return [(m.pair, m.frequency, m.priority, m.offset) for m in ref]


def _frequencies(entries: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, c in entries.items():
        out[key >> OFF_BITS] = out.get(key >> OFF_BITS, 0) + c
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), batches=st.integers(2, 6), pairs=st.integers(1, 3000))
def test_a_table_resized_in_place_keeps_every_count(seed, batches, pairs):
    """Counts added in batches (the table grows several times, re-homing in place) equal a plain dict,
    and every pair's histogram is found from its home."""
    rng = np.random.default_rng(seed)
    stats = Stats(1.0, 1, 64)
    want: dict[int, int] = {}
    for _ in range(batches):
        n = int(rng.integers(1, 4000))
        keys = (rng.integers(0, pairs, n).astype(np.int64) << OFF_BITS) | rng.integers(0, 5, n)
        d = rng.integers(1, 4, n).astype(np.int64)
        stats.add(Deltas(keys, d))
        for k, c in zip(keys.tolist(), d.tolist()):
            want[k] = want.get(k, 0) + c
    assert _entries(stats) == want
    assert stats.live_entries == len(want)
    for pair in {k >> OFF_BITS for k in want}:
        got = {(dy, dx): c for dy, dx, c in stats.histogram(pair)}
        assert sum(got.values()) == _frequencies(want)[pair]


def _grids(seed: int, n: int = 40, V: int = 12):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, size=(int(rng.integers(1, 9)), int(rng.integers(1, 9)))).astype(np.int32)
            for _ in range(n)], V


def _counted_worker(grids, V, min_frequency, filtered):
    codes = np.concatenate([g.reshape(-1) for g in grids]).astype(np.int32)
    shards = GridShards(codes, np.array([g.shape[0] for g in grids], np.int32),
                        np.array([g.shape[1] for g in grids], np.int32), V, shard_cells=64)
    w = LearnerWorker(shards, 0, 1, 1.0, min_frequency)
    if filtered:
        w.set_filter(combine([w.base_pair_counts()], V, min_frequency))
    for r in range(w.count_rounds):
        w.absorb(*w.count(r))
    return w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), min_frequency=st.integers(2, 6))
def test_the_filtered_first_count_tables_exactly_the_pairs_that_can_merge(seed, min_frequency):
    grids, V = _grids(seed)
    plain = _counted_worker(grids, V, min_frequency, filtered=False)
    filtered = _counted_worker(grids, V, min_frequency, filtered=True)
    everything = _entries(plain.stats)
    f = _frequencies(everything)
    assert _entries(filtered.stats) == {k: c for k, c in everything.items() if f[k >> OFF_BITS] >= min_frequency}
    assert filtered.max_frequency() == plain.max_frequency() == max(f.values())  # alpha_rel sees every pair
    plain.start(0.0)
    filtered.start(0.0)
    assert _entries(filtered.stats) == _entries(plain.stats)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), V=st.integers(1, 40), parts=st.integers(1, 5), min_frequency=st.integers(2, 255))
def test_the_filter_built_slice_by_slice_over_the_mesh_equals_the_whole_one(seed, V, parts, min_frequency):
    """Over the mesh each actor sums one slice of everyone's counters and filters it; the joined
    slices must be the filter of the whole sum (bits cut on byte boundaries, left-out maximum)."""
    rng = np.random.default_rng(seed)
    counts = [rng.integers(0, 256, V * V, dtype=np.int64).astype(np.uint8) for _ in range(parts)]
    whole = combine([c.copy() for c in counts], V, min_frequency)
    cuts = slice_bounds(V, parts)
    assert cuts[0] == 0 and cuts[-1] == V * V and all(c % 8 == 0 for c in cuts[:-1]) and (np.diff(cuts) >= 0).all()
    keeps, left_outs = [], []
    for j in range(parts):
        mine = counts[j][cuts[j]:cuts[j + 1]].copy()
        for i in range(parts):
            if i != j:
                add_saturating(mine, counts[i][cuts[j]:cuts[j + 1]])
        keep, left_out = pack_keep(mine, min_frequency)
        keeps.append(keep)
        left_outs.append(int(left_out))
    joined = join_slices(V, keeps, left_outs)
    assert isinstance(joined, PairFilter) and joined.max_left_out == whole.max_left_out
    np.testing.assert_array_equal(joined.keep, whole.keep)


def test_the_filter_is_skipped_where_it_would_not_pay_or_fit():
    assert usable(8192, 2) and usable(16384, 255)
    assert not usable(8192, 1)  # every counted pair can merge
    assert not usable(8192, 256)  # 8-bit counters stop at 255
    assert not usable(16385, 2)  # V^2 bytes would exceed 256 MB


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), min_frequency=st.integers(2, 4), merges=st.integers(1, 40))
def test_after_every_run_the_table_holds_only_pairs_that_can_still_merge(seed, min_frequency, merges):
    grids, V = _grids(seed, n=30, V=6)
    _, workers, _ = learn_arrays(grids, V, merges, alpha=0.5, min_frequency=min_frequency, workers=2)
    for w in workers.workers:
        f = _frequencies(_entries(w.stats))
        assert all(v >= min_frequency for v in f.values()), min(f.values())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), merges=st.integers(3, 40), alpha=st.sampled_from([0.0, 2.0, 50.0]),
       heap_pairs=st.integers(1, 5), workers=st.integers(1, 3))
def test_a_heap_of_only_the_best_pairs_picks_the_reference_merges(seed, merges, alpha, heap_pairs, workers):
    """With a tiny heap (rebuilt whenever its queued pairs are used up, P floors everywhere) the merges
    are still the contract's, ties and large alpha included."""
    import pipeline.bpe.stats as stats_module
    from pipeline.bpe import reference as R

    grids, V = _grids(seed, n=12, V=5)
    ref, _, _ = R.learn(grids, V, merges, alpha=alpha, sigma=1.0, min_frequency=2)
    with mock.patch.object(stats_module, "HEAP_PAIRS", heap_pairs):
        got, workers_, _ = learn_arrays(grids, V, merges, alpha=alpha, sigma=1.0, min_frequency=2, workers=workers)
    assert _as_reference(got) == _reference_merges(ref)
    assert any(w.stats.rebuilds > 1 for w in workers_.workers) or len(got) < 3


def test_a_resizable_array_keeps_its_data_when_it_grows_shrinks_or_must_be_copied():
    from pipeline.bpe.hashtable import ResizableArray

    a = ResizableArray(1000, np.int32, None)
    a.array[:] = np.arange(1000)
    grown = a.resize(5000)
    assert grown[:1000].tolist() == list(range(1000)) and grown.shape == (5000,)
    shrunk = a.resize(300)
    assert shrunk.tolist() == list(range(300))
    held = a.array[:10]  # a view still exported: the mapping cannot move, so the array is copied instead
    copied = a.resize(700)
    assert copied[:300].tolist() == list(range(300)) and held.tolist() == list(range(10))
    t = ResizableArray(8)
    assert t.resize(16).tolist() == [EMPTY] * 16


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), id_bits=st.sampled_from([2, 9, 19]), rows=st.sampled_from([1, 3, 40, 1024]),
       count_bits=st.sampled_from([4, 7, 63]), batches=st.integers(1, 6))
def test_packed_words_keep_every_count_through_widening_overflow_and_resizing(seed, id_bits, rows, count_bits,
                                                                              batches):
    """Entries packed by the run's own widths (widened as larger ids and offsets arrive, counts past
    the field in the overflow table, entries deleted at zero, the table resized) equal a plain dict."""
    import pipeline.bpe.pair_table as PT
    from pipeline.bpe.constants import OFF_BIAS, OFF_SPAN

    with mock.patch.object(PT, "MAX_COUNT_BITS", count_bits):
        rng = np.random.default_rng(seed)
        stats = Stats(1.0, 1, 3)
        want: dict[int, int] = {}
        for _ in range(batches):
            n = int(rng.integers(1, 3000))
            a = rng.integers(0, 1 << id_bits, n)
            b = rng.integers(0, 1 << id_bits, n)
            dy = rng.integers(0, rows, n)
            dx = rng.integers(-(rows - 1), rows, n) if rows > 1 else rng.integers(0, 2, n)
            keys = (((a << 21) | b) << OFF_BITS) | (dy * OFF_SPAN + dx + OFF_BIAS)
            keys = np.unique(keys.astype(np.int64))
            big = rng.random(keys.shape[0]) < 0.2
            d = np.where(big, rng.integers(1, 1 << 22, keys.shape[0]), rng.integers(1, 40, keys.shape[0]))
            old = np.array([want.get(k, 0) for k in keys.tolist()], np.int64)
            shrink = (old > 0) & (rng.random(keys.shape[0]) < 0.4)  # some lose occurrences, some down to zero
            d = np.where(shrink, -rng.integers(0, old + 1), d).astype(np.int64)
            d = np.where(shrink & (rng.random(keys.shape[0]) < 0.5), -old, d)
            stats.add(Deltas(keys, d))
            for k, c in zip(keys.tolist(), d.tolist()):
                want[k] = want.get(k, 0) + c
                if want[k] == 0:
                    del want[k]
        assert _entries(stats) == want
        assert stats.live_entries == len(want)
        assert stats.table.lay[2] <= count_bits
        f = _frequencies(want)
        assert stats.max_frequency() == max(f.values(), default=0)
        for pair in list(f)[:50]:
            assert sum(c for _, _, c in stats.histogram(pair)) == f[pair]
        stats.table.resize(2 * stats.capacity)  # re-homed in place, the overflow table rebuilt
        assert _entries(stats) == want


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), merges=st.integers(3, 40), alpha=st.sampled_from([0.0, 2.0]),
       workers=st.integers(1, 3))
def test_counts_mostly_in_the_overflow_table_still_give_the_reference_merges(seed, merges, alpha, workers):
    """A 4-bit count field sends nearly every count past 15 to the overflow table: same merges."""
    import pipeline.bpe.pair_table as PT
    from pipeline.bpe import reference as R

    grids, V = _grids(seed, n=40, V=5)
    ref, _, _ = R.learn(grids, V, merges, alpha=alpha, sigma=1.0, min_frequency=2)
    with mock.patch.object(PT, "MAX_COUNT_BITS", 4):
        got, _, _ = learn_arrays(grids, V, merges, alpha=alpha, sigma=1.0, min_frequency=2, workers=workers)
    assert _as_reference(got) == _reference_merges(ref)
    assert ref[0].frequency >= 32  # a base pair has two offsets: one count of the first merge passed 15


def test_ids_and_grids_too_wide_for_a_word_are_refused_up_front():
    import pipeline.bpe.pair_table as PT

    assert PT.fits(2**19 - 1, 1024) and PT.fits(2**21 - 1, 64)
    assert not PT.fits(2**19, 1024) and not PT.fits(2**21 - 1, 65)
    with pytest.raises(ValueError, match="bits for a count"):
        PT.layout(21, 21)
