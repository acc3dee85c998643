"""Training data: records, chat segmentation, sequences and labels, overflow rule, rejects, curriculum, batching."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.configargs import load_config
from pipeline.train import chat, curriculum, tiny
from pipeline.train.batches import Geometry, Sequences
from pipeline.train import stream
from pipeline.train.stream import assign, collate, read_rows
from pipeline.train.prepare import IGNORE, prepare
from pipeline.train.records import Turn, read_records
from pipeline.train.schedule import lr_at
from schemas.base import ConfigError, InputError
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, ConversationSource, DataConfig, Mixture, TrainConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tokenizer extended by a small layout (as `vbpe train init` leaves it), a corpus, and records."""
    from pipeline.train.init import extend_tokenizer

    root = tmp_path_factory.mktemp("data")
    tok = tiny.build_tokenizer(str(root / "tok"))
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=16, num_merges=8)
    extend_tokenizer(tok, layout)
    keys = tiny.write_corpus(str(root / "corpus" / "part-0.parquet"), layout, 6, min_len=5, max_len=9)
    return {"root": root, "tok": tok, "layout": layout, "keys": keys}


def write_jsonl(path, rows) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def data_cfg(path, corpus, **kw) -> DataConfig:
    return DataConfig(conversations=[ConversationSource(path=str(path))], corpus=[str(corpus)], image_key="stem", **kw)


def test_segments_mark_only_answers(world):
    tok = world["tok"]
    turns = [Turn("user", "what color is it ?"), Turn("assistant", "red ."), Turn("user", "and which animal ?"), Turn("assistant", "a cat .")]
    segs = chat.segments(tok, turns)
    assert "".join(s for s, _ in segs) == tok.apply_chat_template([{"role": t.role, "content": t.content} for t in turns], tokenize=False)
    answers = [s for s, a in segs if a]
    assert answers == ["red . <|end|> ", "a cat . <|end|> "]
    ids, mask, slots = chat.encode(tok, turns)
    assert slots == []
    assert tok.convert_ids_to_tokens([i for i, m in zip(ids, mask) if m]) == ["red", ".", "<|end|>", "a", "cat", ".", "<|end|>"]


def test_default_template_and_bos_stripping(tmp_path):
    tok = tiny.build_tokenizer(str(tmp_path / "tok"), chat_template=None)
    tok.chat_template = "{{ bos_token }}" + chat.DEFAULT_CHAT_TEMPLATE
    segs = chat.segments(tok, [Turn("user", "what is this ?"), Turn("assistant", "a dog .")])
    assert segs[0][0].startswith("USER: ") and not segs[0][1]
    assert [s for s, a in segs if a] == [" a dog .</s>\n"]


def test_prefix_unstable_template_is_a_reject(world):
    tok = world["tok"]
    saved = tok.chat_template
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %} END{% endif %} {% endfor %}"
    try:
        with pytest.raises(chat.TemplateError, match="prefix-stable"):
            chat.segments(tok, [Turn("user", "a"), Turn("assistant", "b")])
    finally:
        tok.chat_template = saved


def test_sequences_labels_and_every_reject_counted(world, tmp_path):
    tok, layout, keys = world["tok"], world["layout"], world["keys"]
    good = {"id": "ok", "image": f"x/{keys[0]}.jpg", "category": "PD", "conversations": tiny.conversation(keys[0], "perception")}
    rows = [
        good,
        {**good, "id": "multi", "conversations": tiny.conversation(keys[1], "instruction"), "image": f"{keys[1]}.png", "category": "instruction"},
        {**good, "id": "text", "image": None, "category": "foundation"},
        {**good, "id": "trailing", "conversations": good["conversations"] + [{"from": "human", "value": "and ?"}]},
        {**good, "id": "nokey", "image": "missing.jpg"},
        {**good, "id": "badcat", "category": "poetry"},
        {**good, "id": "nocat", "category": None},
        {**good, "id": "empty", "conversations": [{"from": "human", "value": "<image>\nwhat ?"}, {"from": "gpt", "value": "  "}]},
        {**good, "id": "noanswer", "conversations": [{"from": "human", "value": "what ?"}]},
        {**good, "id": "speaker", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
        "{not json",
        [1, 2],
    ]
    path = write_jsonl(tmp_path / "conv" / "a.jsonl", rows)
    stats = prepare(data_cfg(path, world["root"] / "corpus", max_length=64), tok, layout, str(tmp_path / "out"))
    assert stats["records"] == len(rows) == stats["sequences"] + stats["rejected"]
    assert stats["sequences"] == 4 and stats["text_only"] == 1 and stats["trailing_prompts_dropped"] == 1
    rejects = pq.read_table(tmp_path / "out" / "sequences.rejects.parquet").to_pylist()
    reasons = {r["key"]: r["reason"] for r in rejects}
    assert reasons["nokey"] == "unknown image key: 'missing'"
    assert reasons["badcat"] == "unknown category: 'poetry'"
    assert reasons["nocat"].startswith("no category")
    assert reasons["empty"] == "empty answer" and reasons["noanswer"] == "no answer turn"
    assert reasons["speaker"] == "unknown speaker: 'robot'"
    assert sorted(r["reason"].split(":")[0] for r in rejects if r["key"] is None) == ["invalid JSON", "not a mapping"]
    assert all(r["stage"] == "train" and r["source"].endswith("a.jsonl") for r in rejects)

    seqs = {r["record"]: r for r in pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()}
    s = seqs["ok"]
    image = pq.read_table(world["root"] / "corpus" / "part-0.parquet").to_pylist()[0]["input_ids"]
    assert s["input_ids"][: 1 + len(image)] == [tok.bos_token_id, *image]
    assert s["input_ids"][-1] == tok.eos_token_id and s["category"] == "perception" and s["image"] == keys[0]
    answer = [i for i, lab in zip(s["input_ids"], s["labels"]) if lab != IGNORE]
    assert answer == [lab for lab in s["labels"] if lab != IGNORE]
    assert tok.convert_ids_to_tokens(answer) == [tiny.caption(keys[0])[0], ".", "<|end|>", "</s>"]
    assert all(lab == IGNORE for lab in s["labels"][: 1 + len(image)])
    assert tok.decode(s["input_ids"]).count("<image>") == 0  # the placeholder is not left in the text
    assert seqs["text"]["image"] is None and layout.begin_image_id not in seqs["text"]["input_ids"]
    # unchanged inputs: reused, not rebuilt
    mtime = os.path.getmtime(tmp_path / "out" / "sequences.parquet")
    assert prepare(data_cfg(path, world["root"] / "corpus", max_length=64), tok, layout, str(tmp_path / "out"))["fingerprint"] == stats["fingerprint"]
    assert os.path.getmtime(tmp_path / "out" / "sequences.parquet") == mtime


def test_image_loss_labels_the_image(world, tmp_path):
    keys = world["keys"]
    path = write_jsonl(tmp_path / "c.jsonl", [{"image": f"{keys[2]}.jpg", "category": "FD", "conversations": tiny.conversation(keys[2], "foundation")}])
    prepare(data_cfg(path, world["root"] / "corpus", image_loss=True), world["tok"], world["layout"], str(tmp_path / "o"))
    s = pq.read_table(tmp_path / "o" / "sequences.parquet").to_pylist()[0]
    n_image = s["input_ids"].index(world["layout"].end_image_id)
    assert s["labels"][0] == IGNORE and s["labels"][1 : n_image + 1] == s["input_ids"][1 : n_image + 1]


def test_overflow_rule(world, tmp_path):
    keys, tok, layout = world["keys"], world["tok"], world["layout"]
    conv = tiny.conversation(keys[3], "instruction")
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "r", "image": f"{keys[3]}.jpg", "category": "ID", "conversations": conv}])
    full = prepare(data_cfg(path, world["root"] / "corpus"), tok, layout, str(tmp_path / "full"))
    n = full["tokens"]
    image_len = 1 + len(pq.read_table(world["root"] / "corpus" / "part-0.parquet").to_pylist()[3]["input_ids"])
    labels = pq.read_table(tmp_path / "full" / "sequences.parquet").column("labels")[0].as_py()
    first_answer = next(i for i, lab in enumerate(labels) if lab != IGNORE)

    st = prepare(data_cfg(path, world["root"] / "corpus", max_length=n - 3), tok, layout, str(tmp_path / "cut"))
    s = pq.read_table(tmp_path / "cut" / "sequences.parquet").to_pylist()[0]
    assert st["truncated"] == 1 and s["truncated"] and len(s["input_ids"]) == n - 3 and s["n_tokens"] == n - 3

    st = prepare(data_cfg(path, world["root"] / "corpus", max_length=n - 3, overflow="drop"), tok, layout, str(tmp_path / "drop"))
    assert st["sequences"] == 0 and st["reject_reasons"] == {"too long": 1}
    st = prepare(data_cfg(path, world["root"] / "corpus", max_length=image_len), tok, layout, str(tmp_path / "img"))
    assert st["reject_reasons"] == {"image does not fit": 1}
    st = prepare(data_cfg(path, world["root"] / "corpus", max_length=first_answer), tok, layout, str(tmp_path / "noans"))
    assert st["reject_reasons"] == {"no answer within max_length": 1}


def test_corpus_of_another_layout_is_refused(world, tmp_path):
    other = IdLayout(text_vocab_size=world["layout"].text_vocab_size, codebook_size=32, num_merges=8)
    tiny.write_corpus(str(tmp_path / "corpus" / "p.parquet"), other, 2)
    path = write_jsonl(tmp_path / "c.jsonl", [{"image": "img_0000.jpg", "category": "FD", "conversations": tiny.conversation("img_0000", "foundation")}])
    with pytest.raises(InputError, match="layout"):
        prepare(data_cfg(path, tmp_path / "corpus"), world["tok"], world["layout"], str(tmp_path / "o"))


def test_json_and_parquet_sources_with_default_category(tmp_path):
    import pyarrow as pa

    conv = tiny.conversation("img_0001", "foundation")
    (tmp_path / "a.json").write_text(json.dumps([{"id": "j", "image": "img_0001", "conversations": conv}]))
    pq.write_table(pa.Table.from_pylist([{"id": "p", "image": "img_0001", "category": "reasoning", "conversations": conv}]), tmp_path / "b.parquet")
    records, rejects = read_records([ConversationSource(path=str(tmp_path), category="foundation")])
    assert not rejects and {(r.id, r.category) for r in records} == {("j", "foundation"), ("p", "reasoning")}


def _window_shares(p, n_windows=10):
    """(actual, scheduled) share of every category in each of n equal windows of the plan."""
    out = []
    for w in np.array_split(np.arange(len(p)), n_windows):
        actual = np.bincount(p.categories[w], minlength=4) / len(w)
        out.append((actual, p.shares[w].mean(axis=0)))
    return out


@pytest.mark.parametrize("stage,mixture", [(1, (80, 20, 0, 0)), (2, (40, 30, 20, 10)), (3, (15, 15, 30, 40))])
def test_mixture_holds_in_every_stretch(stage, mixture):
    """The authors' mixtures as proportions, not blocks: every 10% window (and every global batch of 32)
    follows the stage's mix, whatever the data's own proportions."""
    rng = np.random.default_rng(0)
    cats = rng.choice(CATEGORIES, size=5000, p=[0.4, 0.3, 0.2, 0.1])
    weights = dict(zip(CATEGORIES, mixture))
    p = curriculum.plan(cats, weights, seed=7, stage=stage, samples=2000)
    assert len(p) == 2000 and all(cats[r] == CATEGORIES[c] for r, c in zip(p.rows, p.categories))
    share = np.array(mixture) / 100
    for actual, scheduled in _window_shares(p):
        assert np.allclose(scheduled, share) and np.abs(actual - share).max() <= 0.01
    for start in range(0, 2000 - 32, 32):  # every global batch of 32 is mixed
        counts = np.bincount(p.categories[start : start + 32], minlength=4)
        assert np.abs(counts - 32 * share).max() < 1.5
    assert np.array_equal(p.rows, curriculum.plan(cats, weights, seed=7, stage=stage, samples=2000).rows)
    assert not np.array_equal(p.rows, curriculum.plan(cats, weights, seed=8, stage=stage, samples=2000).rows)


def test_mixture_shifts_smoothly_toward_the_next_stage():
    cats = np.array(CATEGORIES * 1000)
    start, end = dict(zip(CATEGORIES, (40, 30, 20, 10))), dict(zip(CATEGORIES, (15, 15, 30, 40)))
    p = curriculum.plan(cats, start, seed=1, stage=2, samples=3000, shift_to=end)
    windows = _window_shares(p)
    for actual, scheduled in windows:
        assert np.abs(actual - scheduled).max() <= 0.01
    first, last = windows[0][1], windows[-1][1]
    assert np.allclose(first, [0.3875, 0.2925, 0.205, 0.115]) and np.allclose(last, [0.1625, 0.1575, 0.295, 0.385])
    assert [a[0][3] for a in windows] == sorted(a[0][3] for a in windows)  # instruction grows all the way


def test_pool_passes_default_size_and_shuffle_blocks():
    small = np.array(["foundation"] * 30 + ["perception"] * 30)
    mix = {"foundation": 0.8, "perception": 0.2}
    p = curriculum.plan(small, mix, seed=1, stage=1, epochs=2)
    assert len(p) == 74  # 37 per epoch: the most that needs no foundation sequence twice
    fd = p.rows[p.categories == 0]
    assert len(set(fd[:30].tolist())) == 30 and sorted(fd[:30].tolist()) == list(range(30))  # a whole pass first
    with pytest.raises(InputError, match="reasoning"):
        curriculum.plan(small, {"reasoning": 1.0}, seed=1, stage=2)
    over = curriculum.plan(np.array(["foundation"] * 3 + ["perception"] * 50), {"foundation": 0.5, "perception": 0.5}, seed=3, stage=1, samples=40)
    fd = over.rows[over.categories == 0]
    assert len(fd) == 20 and sorted(np.bincount(fd, minlength=3).tolist()) == [6, 7, 7]  # whole passes, then part of one
    # blocks: 100 draws in a row come from one block of 100 consecutive pool entries
    pool = np.array(["foundation"] * 1000)
    w = curriculum.plan(pool, {"foundation": 1}, seed=2, stage=1, block=100)
    assert all(len({r // 100 for r in w.rows[i : i + 100]}) == 1 for i in range(0, 1000, 100))
    assert sorted(w.rows.tolist()) == list(range(1000)) and not np.array_equal(w.rows, np.arange(1000))


def test_micro_batches_partition_the_global_batch(world, tmp_path):
    keys = world["keys"]
    rows = [{"image": f"{k}.jpg", "category": c, "conversations": tiny.conversation(k, c)} for k in keys for c in CATEGORIES]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    prepare(data_cfg(path, world["root"] / "corpus"), world["tok"], world["layout"], str(tmp_path / "o"))
    seqs = Sequences.read(str(tmp_path / "o" / "sequences.parquet"))
    assert len(seqs) == 24
    table = pq.read_table(tmp_path / "o" / "sequences.parquet").to_pylist()
    assert seqs.targets.tolist() == [r["n_labels"] for r in table] == [r["n_targets"] for r in table]  # the first label is always BOS here
    plan = np.arange(22)
    geo = Geometry.of(len(plan), batch_size=2, grad_accum=3, world_size=2)
    assert geo.steps == 2 and geo.global_batch == 12
    lengths, targets = seqs.lengths(np.arange(24)), seqs.targets
    a = assign(plan, lengths, targets, batch_size=2, grad_accum=3, world=2, steps=geo.steps)
    assert a.per_step == 6 and [len(r) for r in a.rows] == [12, 12]
    for step in range(geo.steps):
        batch = (np.arange(step * 12, (step + 1) * 12) % 22)
        mine = [a.rows[r][step * 6 : (step + 1) * 6] for r in range(2)]
        assert sorted(np.concatenate(mine).tolist()) == sorted(batch.tolist())  # the ranks split the global batch
        assert a.targets[step] == targets[batch].sum()
        for m in range(3):  # micro-batch m of both ranks: neighbours in length order
            pair = np.concatenate([mine[0][2 * m : 2 * m + 2], mine[1][2 * m : 2 * m + 2]])
            longest_before = max((lengths[mine[r][: 2 * m]].max() for r in range(2) if m), default=0)
            assert lengths[pair].min() >= longest_before
    assert sorted(np.concatenate([a.rows[0][6:], a.rows[1][6:]]).tolist()) == sorted(list(range(12, 22)) + [0, 1])  # wraps
    got = read_rows(str(tmp_path / "o" / "sequences.parquet"), np.array([5, 0, 5]))
    assert got.column("input_ids").to_pylist() == [table[5]["input_ids"], table[0]["input_ids"], table[5]["input_ids"]]
    batch = {c: got.column(c).to_numpy(zero_copy_only=False) for c in ("input_ids", "labels")}
    ids, mask, labels = collate(batch, world["layout"].pad_id, IGNORE)
    assert ids.shape == mask.shape == labels.shape and (labels[mask == 0] == IGNORE).all()
    assert (ids[mask == 0] == world["layout"].pad_id).all() and ids[1, : len(table[0]["input_ids"])].tolist() == table[0]["input_ids"]


def test_a_rank_reads_its_rows_a_few_steps_at_a_time_and_only_their_row_groups(tmp_path, monkeypatch):
    """Why a worker's memory does not grow with the data (the figure: bench_train's `memory` part): its rows come
    in items of a few steps (at most ROWS_PER_ITEM rows, in training order), and reading an item (Ray Data's map,
    or the local executor) reads only the Parquet row groups that hold its rows, never the whole file."""
    import pyarrow as pa

    n, group = 4000, 100
    ids = [list(range(i, i + 3)) for i in range(n)]
    path = str(tmp_path / "sequences.parquet")
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(ids, pa.list_(pa.int32()))}),
                   path, row_group_size=group)
    rng = np.random.default_rng(0)  # as the plan: shuffled blocks of one row group each
    rows = np.concatenate([g * group + rng.integers(0, group, 400) for g in rng.permutation(n // group)[:15]])
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, **kw: read.append(list(groups)) or real(self, groups, **kw))
    per_step, first_step = 4, 3
    got = list(stream.items(rows, per_step, first_step))
    assert [s for s, _ in got] == list(range(first_step, len(rows) // per_step, stream.ROWS_PER_ITEM // per_step))
    assert np.array_equal(np.concatenate([r for _, r in got]), rows[first_step * per_step:])
    assert len(got) > 2 and all(len(r) <= stream.ROWS_PER_ITEM and len(r) % per_step == 0 for _, r in got)
    for first, item in got:
        table = stream.read_item(path, first, item, per_step, None)
        assert read.pop() == sorted(set((item // group).tolist())) and len(set((item // group).tolist())) < n // group // 4
        assert table.column("input_ids").to_pylist() == [ids[r] for r in item]
        assert table.column("step").to_pylist() == (first + np.arange(len(item)) // per_step).tolist()
    assert not read


def test_lr_schedule():
    lrs = [lr_at(s, 100, 1e-3, "cosine", 0.03) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[2] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and 0 < lrs[-1] < 1e-5
    assert lr_at(50, 100, 1.0, "constant", 0.0) == 1.0
    assert lr_at(99, 100, 1.0, "linear", 0.0, min_ratio=0.1) == pytest.approx(0.1 + 0.9 / 100)


def test_config_defaults_and_errors(tmp_path):
    cfg = TrainConfig.from_dict({"model": "m", "output": "o/", "data": {"conversations": [{"path": "c"}], "corpus": ["t"]}})
    assert (cfg.stage1.lr, cfg.stage2.lr, cfg.stage3.lr) == (1e-3, 3e-5, 5e-5)
    assert cfg.stage2.unfreeze_fraction == 0.25 and cfg.stage1.warmup_ratio == 0.03 and cfg.stage3.schedule == "cosine"
    assert cfg.stage1.mixture.normalised() == {"foundation": 0.8, "perception": 0.2, "reasoning": 0.0, "instruction": 0.0}
    assert [cfg.stage3.mixture.weights()[c] for c in CATEGORIES] == [15, 15, 30, 40] and cfg.output == "o"
    (tmp_path / "bad.yaml").write_text("model: m\noutput: o\ndata: {conversations: [{path: c}], corpus: [t]}\nstage1: {lr: -1, mixture: {foundation: 0}}\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, tmp_path / "bad.yaml")
    assert "stage1.lr" in str(err.value) and "bogus" in str(err.value) and "positive weight" in str(err.value)


def test_heldout_split_by_image_key(world, tmp_path):
    """Held-out conversations are chosen by a salted hash of the image key: disjoint images, the same
    split on every run, every record accounted for, the learner's hash (same salt, same keys)."""
    from pipeline.codegrids import holdout_mask
    from schemas.train import SEQUENCES_SCHEMA

    many = tiny.write_corpus(str(tmp_path / "corpus" / "p.parquet"), world["layout"], 40, min_len=5, max_len=9)
    rows = [{"id": f"{c}-{k}", "image": f"{k}.jpg", "category": c, "conversations": tiny.conversation(k, c)} for k in many for c in CATEGORIES]
    rows.append({"id": "text", "category": "foundation", "conversations": tiny.conversation(many[0], "foundation")})
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = data_cfg(path, tmp_path / "corpus", heldout_fraction=0.3)
    stats = prepare(cfg, world["tok"], world["layout"], str(tmp_path / "a"))
    assert stats["records"] == len(rows) == stats["sequences"] + stats["heldout"] + stats["rejected"] and stats["rejected"] == 0
    train = pq.read_table(tmp_path / "a" / "sequences.parquet")
    held = pq.read_table(tmp_path / "a" / "heldout.parquet")
    assert held.schema.equals(SEQUENCES_SCHEMA) and train.schema.equals(SEQUENCES_SCHEMA)
    held_images = set(held.column("image").to_pylist())
    train_images = {k for k in train.column("image").to_pylist() if k}
    assert held_images and not held_images & train_images and held_images | train_images == set(many)
    assert held_images == {k for k, h in zip(many, holdout_mask(many, 0.3, "vbpe-holdout")) if h}
    assert held.num_rows == 4 * len(held_images) == stats["heldout"] and stats["heldout_images"] == len(held_images)
    assert "text" in train.column("record").to_pylist()  # text-only records always train
    assert stats["heldout_per_category"] == {c: len(held_images) for c in CATEGORIES}
    assert held.column("images").to_pylist() == [[k] for k in held.column("image").to_pylist()]
    # stable across runs; another salt gives another split
    prepare(cfg, world["tok"], world["layout"], str(tmp_path / "b"))
    assert pq.read_table(tmp_path / "b" / "heldout.parquet").equals(held)
    other = prepare(data_cfg(path, tmp_path / "corpus", heldout_fraction=0.3, heldout_salt="x"), world["tok"], world["layout"], str(tmp_path / "c"))
    assert set(pq.read_table(tmp_path / "c" / "heldout.parquet").column("image").to_pylist()) != held_images
    assert other["fingerprint"] != stats["fingerprint"]
    none = prepare(data_cfg(path, tmp_path / "corpus"), world["tok"], world["layout"], str(tmp_path / "d"))
    assert none["heldout"] == 0 and pq.read_table(tmp_path / "d" / "heldout.parquet").num_rows == 0


def test_prepared_data_is_keyed_by_content(world, tmp_path):
    """Editing a conversation without changing its size (or its modification time) rebuilds the data."""
    keys = [k for k in world["keys"] if tiny.caption(k)[1] == "cat"][:1] or world["keys"][:1]
    rows = [{"id": "r", "image": f"{keys[0]}.jpg", "category": "FD", "conversations": tiny.conversation(keys[0], "foundation")}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = data_cfg(path, world["root"] / "corpus")
    first = prepare(cfg, world["tok"], world["layout"], str(tmp_path / "o"))
    text = open(path).read()
    animal = tiny.caption(keys[0])[1]
    other = next(a for a in tiny.ANIMALS if a != animal and len(a) == len(animal))
    stat = os.stat(path)
    with open(path, "w") as f:
        f.write(text.replace(f" {animal} .", f" {other} ."))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.path.getsize(path) == stat.st_size
    second = prepare(cfg, world["tok"], world["layout"], str(tmp_path / "o"))
    assert second["fingerprint"] != first["fingerprint"] and not second.get("reused")
    ids = pq.read_table(tmp_path / "o" / "sequences.parquet").column("input_ids")[0].as_py()
    assert world["tok"].convert_tokens_to_ids(other) in ids and world["tok"].convert_tokens_to_ids(animal) not in ids
    assert prepare(cfg, world["tok"], world["layout"], str(tmp_path / "o"))["reused"]


def test_default_epoch_size_is_exact_for_round_mixtures():
    cats = np.array([c for c in CATEGORIES for _ in range(12)])
    for mixture, n in [((80, 20, 0, 0), 15), ((40, 30, 20, 10), 30), ((15, 15, 30, 40), 30)]:
        p = curriculum.plan(cats, dict(zip(CATEGORIES, mixture)), seed=0, stage=1, epochs=2)
        assert len(p) == 2 * n and sum(p.counts().values()) == 2 * n


def test_several_images_per_record(world, tmp_path):
    """Images first (default) or each at its <image> placeholder; the count must match; a cut never falls inside an image."""
    tok, layout, keys = world["tok"], world["layout"], world["keys"]
    corpus = {r["key"]: r["input_ids"] for r in pq.read_table(world["root"] / "corpus" / "part-0.parquet").to_pylist()}
    conv = [{"from": "human", "value": "<image>\nwhat color is it ?"}, {"from": "gpt", "value": "red ."},
            {"from": "human", "value": "and this <image> ?"}, {"from": "gpt", "value": "blue ."}]
    two = {"id": "two", "image": [f"{keys[0]}.jpg", f"{keys[1]}.jpg"], "category": "PD", "conversations": conv}
    three = {**two, "id": "three", "image": [keys[0], keys[1], keys[2]]}
    path = write_jsonl(tmp_path / "c.jsonl", [two, three])

    st = prepare(data_cfg(path, world["root"] / "corpus"), tok, layout, str(tmp_path / "first"))
    rows = {r["record"]: r for r in pq.read_table(tmp_path / "first" / "sequences.parquet").to_pylist()}
    assert st["sequences"] == 2 and rows["two"]["images"] == keys[:2] and rows["two"]["image"] == keys[0]
    head = [tok.bos_token_id, *corpus[keys[0]], *corpus[keys[1]]]
    assert rows["two"]["input_ids"][: len(head)] == head and "<image>" not in tok.decode(rows["two"]["input_ids"])

    st = prepare(data_cfg(path, world["root"] / "corpus", images="inline"), tok, layout, str(tmp_path / "inline"))
    assert st["reject_reasons"] == {"image placeholders": 1}
    assert pq.read_table(tmp_path / "inline" / "sequences.rejects.parquet").column("reason").to_pylist() == [
        "image placeholders: 2 in the text for 3 images"]
    s = pq.read_table(tmp_path / "inline" / "sequences.parquet").to_pylist()[0]
    ids = s["input_ids"]
    first, second = ids.index(layout.begin_image_id), len(ids) - 1 - ids[::-1].index(layout.begin_image_id)
    assert ids[first : first + len(corpus[keys[0]])] == corpus[keys[0]] and ids[second : second + len(corpus[keys[1]])] == corpus[keys[1]]
    answers = tok.convert_ids_to_tokens([i for i, lab in zip(ids, s["labels"]) if lab != IGNORE])
    assert answers == ["red", ".", "<|end|>", "blue", ".", "<|end|>", "</s>"]
    assert tok.convert_ids_to_tokens(ids[1:first]) == ["<|user|>"]  # the first image sits inside the user turn
    assert ids.index(tok.convert_tokens_to_ids("red")) < second  # the first answer comes before the second image

    cut = second + 3  # a limit inside the second image: the sequence stops before it, the first answer stays
    st = prepare(data_cfg(path, world["root"] / "corpus", images="inline", max_length=cut), tok, layout, str(tmp_path / "cut"))
    s = pq.read_table(tmp_path / "cut" / "sequences.parquet").to_pylist()[0]
    assert st["truncated"] == 1 and s["input_ids"] == ids[:second] and layout.end_image_id not in s["input_ids"][first + len(corpus[keys[0]]) :]
    st = prepare(data_cfg(path, world["root"] / "corpus", images="inline", max_length=first + 3), tok, layout, str(tmp_path / "none"))
    assert st["reject_reasons"] == {"image does not fit": 1, "image placeholders": 1}


def test_training_sequences_are_stored_by_category_in_whole_row_groups(world, tmp_path):
    """Each category is a run of 1024-row row groups (input order within it): a shuffle block is a row group."""
    keys = world["keys"]
    rows = [{"id": f"{i}", "image": f"{keys[i % len(keys)]}.jpg", "category": c, "conversations": tiny.conversation(keys[i % len(keys)], c)}
            for i in range(1300) for c in ("perception", "foundation")]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    prepare(data_cfg(path, world["root"] / "corpus"), world["tok"], world["layout"], str(tmp_path / "o"))
    f = pq.ParquetFile(tmp_path / "o" / "sequences.parquet")
    groups = [f.read_row_group(g, columns=["category", "record"]) for g in range(f.num_row_groups)]
    assert [(set(g.column("category").to_pylist()), g.num_rows) for g in groups] == [
        ({"foundation"}, 1024), ({"foundation"}, 276), ({"perception"}, 1024), ({"perception"}, 276)]
    assert pq.read_table(tmp_path / "o" / "sequences.parquet").column("record").to_pylist()[:3] == ["0", "1", "2"]
