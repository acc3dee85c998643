"""`vbpe report` end to end on real photos (shards -> grids -> vocabulary -> report) and with zero merges.

Every figure in summary.json is recomputed here from scratch: the held-out keys from blake2b, the
tokens from the encoder, shapes from the slow reference learner's own merge code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.bpe import reference
from pipeline.bpe.encoder import BpeEncoder
from pipeline.learn.api import learn_vocabulary as learn
from pipeline.report.api import run
from pipeline.report.atlas import MAX_WIDTH, PAD, SECTION, TITLE, card_size
from tests.helpers.report import learn_vocab, photo_corpus, write_corpus
from schemas.learn import LearnConfig
from schemas.report import ReportConfig

MERGES = 120
FRACTION = 0.25
SALT = "test-salt"
PLOTS = {"compression.png": (900, 480), "merge_scores.png": (900, 640), "token_sizes.png": (900, 480),
         "dead_tokens.png": (900, 480)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("photos"))
    shards, grids, V = photo_corpus(root, n_samples=160, corrupt_every=7)
    path = write_corpus(os.path.join(root, "grids", "part-0.parquet"), grids, V)
    vocab_path = os.path.join(root, "vocab.json")
    vocab = learn(LearnConfig(inputs=[path], out=vocab_path, merges=MERGES, alpha=20.0, progress=False,
                              checkpoint_every=0))  # the real `vbpe learn` stage
    assert len(vocab.merges) == MERGES
    return {"root": root, "shards": shards, "grids": grids, "V": V, "path": path, "vocab": vocab,
            "vocab_path": vocab_path}


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    cfg = ReportConfig(vocab=corpus["vocab_path"], grids=[corpus["path"]], shards=[corpus["root"]], out=out,  # a directory
                       holdout_fraction=FRACTION, holdout_salt=SALT, atlas_tokens=24, exemplars=3, image_size=128,
                       batch_grids=7)
    return run(cfg), out


def _held_out(grids):
    idx = []
    for i, key in enumerate(grids.keys):
        d = hashlib.blake2b(key.encode(), digest_size=8, key=SALT.encode()).digest()
        if (int.from_bytes(d, "big") >> 11) / 2**53 < FRACTION:
            idx.append(i)
    return idx


def _not_blank(path: str, min_colours: int) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB"))
    assert a.std() > 10, path
    packed = (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]
    assert len(np.unique(packed)) >= min_colours, path
    return a


def test_files_sizes_and_not_blank(report):
    summary, out = report
    for name, size in PLOTS.items():
        assert Image.open(os.path.join(out, name)).size == size
        a = _not_blank(os.path.join(out, name), 20)
        assert (a.min(axis=2) < 200).mean() > 0.01  # ink beyond the frame
    sections = [len(s["ids"]) for s in summary["atlas"]["sections"]]
    assert sum(sections) == len(summary["atlas"]["tokens"]) and len(sections) == 2
    cw, ch = card_size(3)
    cols = min(max(sections), (MAX_WIDTH - PAD) // (cw + PAD))
    rows = sum(-(-n // cols) for n in sections)
    atlas = os.path.join(out, "atlas.png")
    assert Image.open(atlas).size == (PAD + cols * (cw + PAD), TITLE + SECTION * 2 + rows * (ch + PAD) + PAD)
    _not_blank(atlas, 500)  # photo crops bring many colours
    page = open(os.path.join(out, "report.html")).read()
    assert page.count("data:image/png;base64,") == 5
    assert json.load(open(os.path.join(out, "summary.json")))["dead"] == summary["dead"]
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["status"] == "ok" and (m["rows_in"], m["rows_out"], m["rows_rejected"], m["rows_accounted"]) == (160, 160, 0, True)
    assert m["held_out_grids"] == summary["sample"]["held_out_grids"]


def test_summary_matches_independent_computation(corpus, report):
    summary, _ = report
    grids, vocab, V = corpus["grids"], corpus["vocab"], corpus["V"]
    idx = _held_out(grids)
    assert summary["sample"]["held_out_grids"] == len(idx) > 10
    assert summary["sample"]["grids_match_training_corpus"] is True
    codes = np.concatenate([grids.grid(i).reshape(-1) for i in idx])
    hs, ws = grids.heights[idx], grids.widths[idx]
    enc = BpeEncoder(vocab).encode(codes, hs, ws)
    usage = np.bincount(enc.tokens, minlength=vocab.size)
    c = summary["compression"]
    assert c["cells_per_grid"] == codes.size / len(idx)
    assert c["final_holdout"] == pytest.approx(len(enc.tokens) / len(idx))
    assert c["final_train"] == pytest.approx(vocab.tokens_per_grid()[-1])
    for k in (0, 1, MERGES // 3, MERGES):
        n = len(BpeEncoder(dataclasses.replace(vocab, merges=vocab.merges[:k])).encode(codes, hs, ws).tokens)
        assert c["holdout_tokens_per_grid"][k] == pytest.approx(n / len(idx), abs=1e-4)
    d = summary["dead"]
    assert d["learned_unused"] == int((usage[V:] == 0).sum())
    assert d["dead_rate"] == pytest.approx((usage[V:] == 0).mean())
    assert d["rare_rate"] == pytest.approx((usage[V:] < 5).mean())
    assert d["base_unused"] == int((usage[:V] == 0).sum())
    half = [p for p in d["by_vocabulary_size"] if p["merges"] == MERGES // 2][0]
    u2 = np.bincount(BpeEncoder(dataclasses.replace(vocab, merges=vocab.merges[: MERGES // 2])).encode(codes, hs, ws).tokens,
                     minlength=V + MERGES // 2)
    assert half["unused"] == int((u2[V:] == 0).sum())
    # sizes: leaves of each merge tree, counted by recursion
    def leaves(t):
        return 1 if t < V else leaves(vocab.merges[t - V].pair[0]) + leaves(vocab.merges[t - V].pair[1])
    sizes = [leaves(V + k) for k in range(MERGES)]
    assert summary["token_sizes"]["learned_ids"] == {s: sizes.count(s) for s in sorted(set(sizes))}
    occ: dict[int, int] = {}
    for t in enc.tokens:
        s = 1 if t < V else sizes[t - V]
        occ[s] = occ.get(s, 0) + 1
    assert {int(k): v for k, v in summary["token_sizes"]["occurrences"].items()} == occ
    assert summary["merges"]["frequency"] == [m.frequency for m in vocab.merges]
    assert summary["merges"]["consistency"] == pytest.approx([m.consistency for m in vocab.merges], abs=1e-6)
    # merge kinds from the leaves: one code throughout = flat, (t, t) = repeat, else mixed
    def codes_of(t):
        return {t} if t < V else codes_of(vocab.merges[t - V].pair[0]) | codes_of(vocab.merges[t - V].pair[1])
    kind = {t: "flat" if len(codes_of(t)) == 1 else ("repeat" if len(set(vocab.merges[t - V].pair)) == 1 else "mixed")
            for t in range(V, vocab.size)}
    for name in ("flat", "repeat", "mixed"):
        ids = [t for t in kind if kind[t] == name]
        k = summary["merge_kinds"][name]
        assert k["ids"] == len(ids) and k["share_of_vocabulary"] == pytest.approx(len(ids) / MERGES)
        assert k["occurrences"] == int(usage[ids].sum()) and k["share_of_tokens"] == pytest.approx(usage[ids].sum() / usage.sum())
    assert summary["merge_kinds"]["base codes"]["occurrences"] == int(usage[:V].sum())
    # atlas: the most used multi-code tokens, then the most used flat ones (12 each), top shapes from the reference
    multi = sorted((t for t in kind if kind[t] != "flat"), key=lambda t: (-usage[t], t))
    flat = sorted((t for t in kind if kind[t] == "flat"), key=lambda t: (-usage[t], t))
    n_multi = min(len(multi), max(24 - len(flat), 12))
    cards = summary["atlas"]["tokens"]
    assert [t["id"] for t in cards] == multi[:n_multi] + flat[: 24 - n_multi]
    assert [c["kind"] for c in cards] == [kind[c["id"]] for c in cards]
    assert [s["ids"] for s in summary["atlas"]["sections"]] == [multi[:n_multi], flat[: 24 - n_multi]]
    shapes: dict[int, dict[tuple, int]] = {}
    for j, i in enumerate(idx):
        g = reference.RefGrid.from_codes(grids.grid(i))
        for m in vocab.merges:
            reference.apply_merge(g, m.pair[0], m.pair[1], m.id, m.offset)
        for anchor, t in g.tok.items():
            if t >= V:
                ar, ac = divmod(anchor, g.width)
                cells = tuple(sorted((x // g.width - ar, x % g.width - ac) for x in g.cells[anchor]))
                shapes.setdefault(t, {})[cells] = shapes.setdefault(t, {}).get(cells, 0) + 1
    for card in cards:
        t = card["id"]
        assert card["usage"] == usage[t] and card["size"] == sizes[t - V]
        assert card["distinct_shapes"] == len(shapes[t])
        best = max(shapes[t].values())
        assert shapes[t].get(tuple(map(tuple, card["top_shape"]))) == best
        assert card["top_shape_share"] == pytest.approx(best / usage[t])
        variants = card["shape_variants"]
        assert [round(v["share"] * usage[t]) for v in variants] == sorted(shapes[t].values(), reverse=True)[:3]
        for v in variants:
            assert shapes[t][tuple(map(tuple, v["cells"]))] == round(v["share"] * usage[t])


def test_exemplars_are_real_crops_or_recorded(report, corpus):
    summary, _ = report
    ex = [e for t in summary["atlas"]["tokens"] for e in t["exemplars"]]
    ok = [e for e in ex if e["status"] == "ok"]
    bad = [e for e in ex if e["status"] != "ok"]
    assert len(ok) >= 24  # at least one per card
    assert all(int(e["key"][1:]) % 7 == 6 for e in bad)  # only the planted corrupt images fail
    assert bad and all(e["status"].startswith("image unreadable") for e in bad)
    note = summary["atlas"]["exemplars"]
    assert note["crops"] == len(ok) and note["no_exemplar"] == len(bad)
    assert summary["atlas"]["image_size"] == 128 and summary["atlas"]["image_size_source"] == "flag"


def test_missing_shard_gives_recorded_no_exemplar(corpus, tmp_path):
    out = str(tmp_path / "r")
    with pytest.raises(FileNotFoundError):
        run(ReportConfig(vocab=corpus["vocab_path"], grids=[corpus["path"]], shards=[str(tmp_path / "nope-*.tar")], out=out))
    only_first = os.path.join(corpus["root"], "shard-000*.tar")  # a glob matching one of the two shards
    summary = run(ReportConfig(vocab=corpus["vocab_path"], grids=[corpus["path"]], shards=[only_first],
                               out=out, holdout_fraction=0.5, atlas_tokens=8, exemplars=2, dead_rate_points=1))
    ex = [e for t in summary["atlas"]["tokens"] for e in t["exemplars"]]
    assert any(e["status"] == "ok" for e in ex)
    assert any(e["status"].startswith("no image for key") for e in ex)
    assert summary["atlas"]["image_size_source"] == "default"
    assert os.path.getsize(os.path.join(out, "atlas.png")) > 10_000


def test_zero_merges(corpus, tmp_path):
    grids, V = corpus["grids"], corpus["V"]
    vocab = learn_vocab(grids.codes, grids.heights, grids.widths, V, 0)
    vocab_path = str(tmp_path / "v0.json")
    vocab.save(vocab_path)
    out = str(tmp_path / "r0")
    for shards in ([], corpus["shards"]):
        summary = run(ReportConfig(vocab=vocab_path, grids=[corpus["path"]], shards=shards, out=out,
                                   holdout_fraction=FRACTION, holdout_salt=SALT, atlas_tokens=10, exemplars=2))
        idx = _held_out(grids)
        codes = np.concatenate([grids.grid(i).reshape(-1) for i in idx])
        usage = np.bincount(codes, minlength=V)
        assert summary["vocab"]["merges"] == 0
        assert summary["compression"]["holdout_tokens_per_grid"] == [pytest.approx(codes.size / len(idx))]
        assert summary["dead"]["dead_rate"] is None and summary["dead"]["learned_ids"] == 0
        assert summary["dead"]["base_unused"] == int((usage == 0).sum())
        assert [t["id"] for t in summary["atlas"]["tokens"]] == sorted(range(V), key=lambda c: (-usage[c], c))[:10]
        for name, size in PLOTS.items():
            assert Image.open(os.path.join(out, name)).size == size
            _not_blank(os.path.join(out, name), 5)
        _not_blank(os.path.join(out, "atlas.png"), 20)
    assert any(e["status"] == "ok" for t in summary["atlas"]["tokens"] for e in t["exemplars"])


def test_cli(corpus, tmp_path, capsys):
    out = str(tmp_path / "cli")
    code = cli.main(["report", "--vocab", corpus["vocab_path"], "--grids", corpus["path"], "--out", out,
                     "--holdout-fraction", "0.2", "--atlas-tokens", "6", "--dead-rate-points", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and f"atlas:  {os.path.join(out, 'atlas.png')}" in printed
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert len(summary["atlas"]["tokens"]) == 6 and len(summary["dead"]["by_vocabulary_size"]) == 2
    assert summary["atlas"]["exemplars"]["status"].startswith("no source images")
    # a YAML config, a flag overriding it, and a bad field
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"vocab: {corpus['vocab_path']}\ngrids: [{corpus['path']}]\nout: {out}\natlas_tokens: 3\n")
    assert cli.main(["report", "--config", str(cfg), "--atlas-tokens", "2", "--holdout-fraction", "0.2"]) == 0
    assert len(json.load(open(os.path.join(out, "summary.json")))["atlas"]["tokens"]) == 2
    cfg.write_text(f"vocab: {corpus['vocab_path']}\ngrids: [{corpus['path']}]\nout: {out}\natlas_token: 3\n")
    assert cli.main(["report", "--config", str(cfg)]) == 2
    assert "atlas_token" in capsys.readouterr().err


def test_wrong_codebook_is_one_clear_error(corpus, tmp_path, capsys):
    other = dataclasses.replace(corpus["vocab"], codebook_size=32, merges=[])
    path = str(tmp_path / "v32.json")
    other.save(path)
    assert cli.main(["report", "--vocab", path, "--grids", corpus["path"], "--out", str(tmp_path / "x")]) == 2
    assert "codebook of 64 codes" in capsys.readouterr().err
