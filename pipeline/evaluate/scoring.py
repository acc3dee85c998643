"""Score one model on held-out sequences: answer-token loss and greedy exact-match accuracy, per data type.

Loss: the training objective on the held-out set, i.e. mean cross-entropy over the labelled (answer)
tokens, teacher-forced, pooled over all tokens of a data type (and of all types for `overall`).

Accuracy: every answer of every held-out conversation is one question. The prompt is the sequence up
to that answer (the image, the earlier turns with their gold answers, the question); the model
generates greedily until an end-of-turn or end-of-sequence id (the ids that close gold answers) or
the gold length + `extra_tokens`; prediction and gold are cut at the first such id, decoded, and
compared after `answers.normalise`. A prediction that does not end within that length is wrong. Answers cut short by the sequence's max_length are not asked.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.evaluate.answers import IGNORE, answer_spans, cut_at_stop, normalise
from schemas.train import CATEGORIES

EXAMPLES_PER_TYPE = 3


@dataclass
class Question:
    row: int
    category: str
    prompt: np.ndarray
    gold: list[int]
    turn: int = 0  # which answer of its conversation (0 = the first)


@dataclass
class Tally:
    loss_sum: float = 0.0
    loss_tokens: int = 0
    answers: int = 0
    correct: int = 0
    sequences: int = 0
    examples: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "answer_loss": self.loss_sum / self.loss_tokens if self.loss_tokens else None,
            "answer_accuracy": self.correct / self.answers if self.answers else None,
            "answers": self.answers,
            "correct": self.correct,
            "sequences": self.sequences,
            "label_tokens": self.loss_tokens,
        }


def _rows(table: pa.Table) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[bool]]:
    ids = [np.asarray(x, np.int64) for x in table.column("input_ids").to_pylist()]
    labels = [np.asarray(x, np.int64) for x in table.column("labels").to_pylist()]
    return ids, labels, table.column("category").to_pylist(), table.column("truncated").to_pylist()


def questions(table: pa.Table, end_image_id: int | None) -> tuple[list[Question], set[int], int]:
    """One question per complete answer; the stop ids are the last ids of complete answers; and the
    number of answers left out because max_length cut them."""
    ids, labels, cats, truncated = _rows(table)
    out, stop, cut = [], set(), 0
    for r, (x, y) in enumerate(zip(ids, labels)):
        hits = np.flatnonzero(x == end_image_id) if end_image_id is not None else []
        image_end = int(hits[0]) + 1 if len(hits) else 0
        for turn, (a, b) in enumerate(answer_spans(y, skip_first=image_end)):
            if truncated[r] and b == len(x):
                cut += 1
                continue
            out.append(Question(r, cats[r], x[:a], x[a:b].tolist(), turn))
            stop.add(int(x[b - 1]))
    return out, stop, cut


def _batches(order: np.ndarray, size: int):
    for i in range(0, len(order), size):
        yield order[i : i + size]


def answer_loss(model, table: pa.Table, pad_id: int, batch_size: int, device) -> dict[str, tuple[float, int]]:
    """Per category: (summed cross-entropy over labelled tokens, number of such tokens)."""
    import torch
    import torch.nn.functional as F

    ids, labels, cats, _ = _rows(table)
    order = np.argsort([len(x) for x in ids], kind="stable")
    sums: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    with torch.no_grad():
        for rows in _batches(order, batch_size):
            width = max(len(ids[r]) for r in rows)
            x = torch.full((len(rows), width), pad_id, dtype=torch.long)
            y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(ids[r])
                x[i, :n], y[i, :n], mask[i, :n] = torch.from_numpy(ids[r]), torch.from_numpy(labels[r]), 1
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
            target = y[:, 1:].to(device)
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
            per_row = ce.sum(1).cpu().numpy()
            counts = (target != IGNORE).sum(1).cpu().numpy()
            for i, r in enumerate(rows):
                sums[cats[r]][0] += float(per_row[i])
                sums[cats[r]][1] += int(counts[i])
    return {c: (s, n) for c, (s, n) in sums.items()}


def generate_answers(model, qs: list[Question], stop: set[int], pad_id: int, batch_size: int, extra_tokens: int,
                     device) -> list[list[int]]:
    """Greedy continuations of each question's prompt (left-padded batches of similar length)."""
    import torch

    out: list[list[int]] = [[] for _ in qs]
    order = np.argsort([len(q.prompt) for q in qs], kind="stable")
    stop_ids = sorted(stop)
    with torch.no_grad():
        for rows in _batches(order, batch_size):
            width = max(len(qs[r].prompt) for r in rows)
            x = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(qs[r].prompt)
                x[i, width - n :] = torch.from_numpy(qs[r].prompt)
                mask[i, width - n :] = 1
            new = max(len(qs[r].gold) for r in rows) + extra_tokens
            gen = model.generate(
                input_ids=x.to(device), attention_mask=mask.to(device), max_new_tokens=new, min_new_tokens=0,
                do_sample=False, num_beams=1, eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True,
            )
            for i, r in enumerate(rows):  # a batch runs as long as its longest gold: cap each at its own
                out[r] = gen[i, width : width + len(qs[r].gold) + extra_tokens].tolist()
    return out


def score(model, tokenizer, table: pa.Table, *, pad_id: int, end_image_id: int | None, batch_size: int = 32,
          extra_tokens: int = 4, device: Any = "cpu") -> dict[str, Any]:
    """Figures of one model on one held-out table: overall and per data type (see the module docstring)."""
    cats = table.column("category").to_pylist()
    tallies = {c: Tally() for c in CATEGORIES}
    for c in cats:
        tallies[c].sequences += 1
    for c, (s, n) in answer_loss(model, table, pad_id, batch_size, device).items():
        tallies[c].loss_sum, tallies[c].loss_tokens = s, n

    qs, stop, cut = questions(table, end_image_id)
    preds = generate_answers(model, qs, stop, pad_id, batch_size, extra_tokens, device) if qs else []
    records = table.column("record").to_pylist() if "record" in table.column_names else [str(i) for i in range(table.num_rows)]
    detail = {"record": [], "category": [], "turn": [], "gold": [], "predicted": [], "correct": []}
    for q, p in zip(qs, preds):
        t = tallies[q.category]
        gold_text = tokenizer.decode(cut_at_stop(q.gold, stop), skip_special_tokens=False)
        pred = cut_at_stop(p, stop)
        pred_text = tokenizer.decode(pred, skip_special_tokens=False)
        ok = len(pred) < len(p) and normalise(pred_text) == normalise(gold_text)  # the answer must end
        t.answers += 1
        t.correct += int(ok)
        for k, v in (("record", records[q.row]), ("category", q.category), ("turn", q.turn), ("gold", gold_text.strip()),
                     ("predicted", pred_text.strip()), ("correct", ok)):
            detail[k].append(v)
        if len(t.examples) < EXAMPLES_PER_TYPE:
            t.examples.append({"gold": gold_text.strip(), "predicted": pred_text.strip(), "correct": ok})

    total = Tally()
    for t in tallies.values():
        total.loss_sum += t.loss_sum
        total.loss_tokens += t.loss_tokens
        total.answers += t.answers
        total.correct += t.correct
        total.sequences += t.sequences
    result = total.to_json()
    result["by_type"] = {c: t.to_json() for c, t in tallies.items() if t.sequences}
    result["examples"] = {c: t.examples for c, t in tallies.items() if t.examples}
    result["answers_cut_by_max_length"] = cut
    result = _finite(result)
    result["detail"] = detail  # per answer: record, category, turn, gold, predicted, correct (not for JSON)
    return result


def _finite(d: dict) -> dict:
    """A diverged model gives inf/NaN losses: stored as null with a flag (JSON has no NaN)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _finite(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out["non_finite"] = True
            v = None
        out[k] = v
    return out
