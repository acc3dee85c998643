"""Held-out scoring: answer spans, normalisation, batched greedy decoding, loss and exact match on a real tiny Llama."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.evaluate.answers import IGNORE, answer_spans, cut_at_stop, normalise
from pipeline.evaluate.scoring import generate_answers, questions, score
from pipeline.train import chat
from pipeline.train.records import Turn
from pipeline.train.tiny import build_tokenizer

EOI = 3  # pretend end-of-image id in these hand-made sequences
torch.set_num_threads(1)  # tiny matrices; more threads only contend with the other test worker


def test_answer_spans_and_normalisation():
    labels = np.array([IGNORE, 5, 6, IGNORE, IGNORE, 7, IGNORE, 8, 9, 10])
    assert answer_spans(labels) == [(1, 3), (5, 6), (7, 10)]
    assert answer_spans(labels, skip_first=4) == [(5, 6), (7, 10)]
    assert answer_spans(np.full(4, IGNORE)) == []
    assert answer_spans(np.array([1, 2, IGNORE, 3])) == [(3, 4)]  # position 0 predicts nothing
    assert cut_at_stop([4, 5, 9, 6], {9}) == [4, 5]
    assert cut_at_stop([4, 5], {9}) == [4, 5]
    assert normalise("The Red  circle .") == normalise("red circle") == "red circle"
    assert normalise("two.") == "two" and normalise("an apple, a pear") == "apple pear"
    assert normalise("yes .") != normalise("no .")


def _tiny_model(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                      eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def test_batched_left_padded_greedy_equals_one_at_a_time():
    model = _tiny_model(40)
    rng = np.random.default_rng(0)
    from pipeline.evaluate.scoring import Question

    qs = [Question(i, "perception", rng.integers(4, 40, rng.integers(3, 15)), [5] * int(rng.integers(1, 6))) for i in range(9)]
    stop = {2, 7}
    batched = generate_answers(model, qs, stop, pad_id=0, batch_size=4, extra_tokens=2, device="cpu")
    lengths = set()
    for q, got in zip(qs, batched):
        alone = generate_answers(model, [q], stop, pad_id=0, batch_size=1, extra_tokens=2, device="cpu")[0]
        assert cut_at_stop(got, stop) == cut_at_stop(alone, stop)
        assert got == alone or (any(t in stop for t in alone) and got[: len(alone)] == alone)
        lengths.add(len(q.prompt))
    assert len(lengths) > 3  # the batches really mixed prompt lengths (left padding)


def _sequences(tok, conversations: list[tuple[str, list[tuple[str, str]]]]):
    """Hand-made held-out rows: BOS + fake image (ids 10, 11 closed by EOI) + chat turns + EOS, answer labels."""
    ids_rows, label_rows, cats = [], [], []
    for cat, turns in conversations:
        t = [Turn(r, c) for q, a in turns for r, c in (("user", q), ("assistant", a))]
        ids, ans, _ = chat.encode(tok, t)
        x = [tok.bos_token_id, 10, 11, EOI, *ids, tok.eos_token_id]
        y = [IGNORE] * 4 + [i if a else IGNORE for i, a in zip(ids, ans)] + [tok.eos_token_id]
        ids_rows.append(x)
        label_rows.append(y)
        cats.append(cat)
    return pa.table({"category": cats, "input_ids": ids_rows, "labels": label_rows, "truncated": [False] * len(cats)})


def _memorise(model, table, steps=150):
    """Train the tiny model until it reproduces these sequences' answers."""
    ids = [torch.tensor(x) for x in table.column("input_ids").to_pylist()]
    labels = [torch.tensor(y) for y in table.column("labels").to_pylist()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(input_ids=x[None], labels=y[None]).loss for x, y in zip(ids, labels))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_score_counts_right_and_wrong_answers(tmp_path):
    tok = build_tokenizer(str(tmp_path / "tok"))
    convs = [
        ("perception", [("what color is it ?", "red .")]),
        ("reasoning", [("is it a cat ?", "yes .")]),
        ("instruction", [("what animal is it ?", "a dog ."), ("and which color ?", "blue .")]),
    ]
    table = _sequences(tok, convs)
    model = _tiny_model(len(tok))
    _memorise(model, table)
    qs, stop, cut = questions(table, EOI)
    assert len(qs) == 4 and cut == 0
    assert stop == {tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id}
    res = score(model, tok, table, pad_id=0, end_image_id=EOI, batch_size=2)
    assert res["answers"] == 4 and res["answer_accuracy"] == 1.0
    assert res["by_type"]["instruction"]["answers"] == 2
    assert set(res["by_type"]) == {"perception", "reasoning", "instruction"}

    # loss: the same as the model's own mean over labelled tokens, pooled
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist()):
            n = sum(1 for v in y[1:] if v != IGNORE)
            total += float(model(input_ids=torch.tensor([x]), labels=torch.tensor([y])).loss) * n
            count += n
    assert res["answer_loss"] == pytest.approx(total / count, rel=1e-3)  # float32, batches padded differently
    assert res["label_tokens"] == count

    # the same model against other gold answers: those count as wrong, the others stay right
    wrong = _sequences(tok, [("perception", [("what color is it ?", "blue .")]), convs[1], convs[2]])
    res2 = score(model, tok, wrong, pad_id=0, end_image_id=EOI, batch_size=4)
    assert res2["by_type"]["perception"]["answer_accuracy"] == 0.0
    assert res2["by_type"]["reasoning"]["answer_accuracy"] == 1.0
    assert res2["answer_accuracy"] == 0.75
    example = res2["examples"]["perception"][0]
    assert normalise(example["gold"]) == "blue" and normalise(example["predicted"]) == "red" and not example["correct"]


def test_truncated_answers_are_not_asked(tmp_path):
    tok = build_tokenizer(str(tmp_path / "tok"))
    table = _sequences(tok, [("instruction", [("what animal is it ?", "a dog ."), ("and which color ?", "blue .")])])
    x, y = table.column("input_ids").to_pylist()[0], table.column("labels").to_pylist()[0]
    cut_table = pa.table({"category": ["instruction"], "input_ids": [x[:-2]], "labels": [y[:-2]], "truncated": [True]})
    qs, _, cut = questions(cut_table, EOI)
    assert len(qs) == 1 and cut == 1


def test_paired_comparison_and_exact_mcnemar():
    from pipeline.evaluate.paired import binomial_two_sided, paired

    assert binomial_two_sided(3, 10) == pytest.approx(0.34375)
    assert binomial_two_sided(0, 5) == pytest.approx(0.0625) == binomial_two_sided(5, 5)
    assert binomial_two_sided(5, 10) == 1.0 and binomial_two_sided(0, 0) == 1.0
    a = {i: i < 50 for i in range(100)}  # right on 0..49
    b = {i: 10 <= i < 70 for i in range(100)}  # right on 10..69: 10 lost, 20 gained
    r = paired(a, b)
    assert (r["questions"], r["only_first_right"], r["only_second_right"], r["both_right"]) == (100, 10, 20, 40)
    assert r["difference"] == pytest.approx(0.10)
    lo, hi = r["difference_95"]
    assert lo < 0.10 < hi and hi - lo < 0.25
    assert r["mcnemar_p"] == pytest.approx(binomial_two_sided(20, 30))
    assert paired(a, a)["difference"] == 0 and paired(a, a)["mcnemar_p"] == 1.0
