"""`vbpe eval ablation`: the same corpus through arms that differ only in the vocabulary.

  shared   scenes corpus -> quantizer (fitted on separate scenes) -> code grids; the text LLM
  per M    learn M merges (held-out images excluded) -> tokenize -> `vbpe train init` (the LLM
           extended by the layout, new rows by `llm.init_rule`)
  per arm  `vbpe train` stage1..3 on the arm's sequences -> `vbpe train eval` on held-out images

M = 0 is the VQ-only arm (the paper's "without BPE"). Everything but the vocabulary is shared: the
conversations, the held-out images, the LLM, its seed, the curriculum, the stage settings. Budget
`steps` gives every arm the same optimizer steps over the same sequences (BPE sequences are shorter,
so they see fewer tokens); budget `tokens` adds, per M, an arm whose epochs are scaled so that it
trains on as many tokens as the VQ-only arm. Every part resumes: a re-run skips what is done.

Run directory:
  corpus/               the scenes (shards, conversations.jsonl, scenes.jsonl)
  quantizer/            fit-scenes/, kmeans.safetensors
  codes/                code grids (quantize output)
  llm/                  the text LLM both arms start from
  vocab/M<M>/           vocab.json, tokens/ (tokenized corpus), base/ (train init output)
  arms/<arm>/           train.yaml, the train run (data/, stage*/, eval/)
  ablation.json         the result (schema in docs/evaluate.md), ablation.png, ablation.md
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline import storage
from schemas.base import ConfigError, InputError, StorageOptions
from schemas.evaluate import AblationConfig
from schemas.scenes import ScenesConfig
from schemas.train import CATEGORIES, STAGES

log = logging.getLogger(__name__)
FORMAT = "vbpe.ablation.v1"
ABBREV = {"foundation": "FD", "perception": "PD", "reasoning": "RD", "instruction": "ID"}
FIT_SEED_OFFSET = 1_000_003  # the quantizer is fitted on other scenes than the corpus's


class Timings:
    """Seconds each part took when it did its work, kept across re-runs (a resumed part keeps its time)."""

    def __init__(self, out: str, options: StorageOptions | None = None):
        self.path, self.options = storage.join(out, "timings.json"), options
        self.data: dict[str, float] = (json.loads(storage.read_text(self.path, options))
                                       if storage.exists(self.path, options) else {})

    def record(self, key: str, seconds: float, did_work: bool) -> float:
        if did_work or key not in self.data:
            self.data[key] = round(seconds, 2)
            storage.write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n", self.options)
        return self.data[key]


# Changing these does not change any result already in the run directory.
_EXTENSIBLE = {"out", "merges", "budgets", "eval_batch_size", "parallel_arms"}


def check_run_directory(cfg: AblationConfig) -> None:
    """A run directory holds one experiment: refuse other settings (arms may be added)."""
    path = storage.join(cfg.out, "ablation.config.json")
    mine = cfg.model_dump(mode="json", exclude=_EXTENSIBLE)
    if storage.exists(path, cfg.storage):
        old = json.loads(storage.read_text(path, cfg.storage))
        changed = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        if changed:
            raise ConfigError(f"{cfg.out} holds an ablation run with other settings ({', '.join(changed)}); "
                              "use a new --out (only merges, budgets, eval_batch_size and parallel_arms may change)")
        return
    storage.write_text(path, json.dumps(mine, indent=1) + "\n", cfg.storage)


@dataclass
class Shared:
    corpus: dict
    quantizer: dict
    grids: str
    llm: str
    llm_info: dict
    seconds: dict


@dataclass(frozen=True)
class Arm:
    merges: int
    budget: str  # steps | tokens

    @property
    def name(self) -> str:
        if self.merges == 0:
            return "vq"
        return f"bpe{self.merges}" + ("-tokens" if self.budget == "tokens" else "")


def arms_of(cfg: AblationConfig) -> list[Arm]:
    out = [Arm(0, "steps")]
    if "steps" in cfg.budgets:
        out += [Arm(m, "steps") for m in cfg.merges]
    if "tokens" in cfg.budgets:
        out += [Arm(m, "tokens") for m in cfg.merges]
    return out


def _ensure_ray(cfg: AblationConfig) -> None:
    from pipeline.execution import ensure_ray

    ensure_ray(None)


def _storage(cfg: AblationConfig) -> dict:
    return {"storage": cfg.storage} if cfg.storage else {}


def _stage(name: str, cfg):
    """A product stage run as `vbpe <stage>` runs it (the runner writes its metrics file next to its output)."""
    from pipeline.runner import execute
    from pipeline.stage import get_stage

    return execute(get_stage(name), cfg)


# ---------------------------------------------------------------- shared parts

def _quantizer(cfg: AblationConfig, out: str):
    """The configured quantizer, or k-means fitted on scenes generated for that purpose only."""
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.scenes.corpus import generate
    from schemas.quantize import IngestOptions, KMeansQuantizerConfig

    if cfg.quantizer is not None:
        return cfg.quantizer
    k = cfg.kmeans
    q = KMeansQuantizerConfig(
        codebook=storage.join(out, "quantizer", "kmeans.safetensors"), image_size=cfg.scenes.image_size,
        patch_size=k.patch_size, codebook_size=k.codebook_size, resample="nearest", fit_images=k.fit_images,
        fit_patches=k.fit_patches, fit_iterations=k.fit_iterations, seed=cfg.seed,
    )
    if not storage.exists(q.codebook, cfg.storage):
        spec = cfg.scenes.model_dump(mode="json")
        spec.update(seed=cfg.scenes.seed + FIT_SEED_OFFSET, images=k.fit_images, shards=1,
                    conversations={"foundation": 1, "perception": 0, "reasoning": 0, "instruction": 0})
        fit = generate(ScenesConfig(out=storage.join(out, "quantizer", "fit-scenes"), **spec, **_storage(cfg)))
        ensure_codebook(q, fit["shards"], IngestOptions(), cfg.storage)
    return q


def _records(conversations: str, options: StorageOptions | None):
    from pipeline.train.records import read_records
    from schemas.train import ConversationSource

    records, rejects = read_records([ConversationSource(path=conversations)], options=options)
    if rejects:
        raise InputError(f"{conversations}: {len(rejects)} records could not be read (first: {rejects[0].reason})")
    return records


def training_records(records, fraction: float, salt: str):
    """Records whose image is not held out (the same rule as `prepare`'s split)."""
    from pipeline.codegrids import key_hash

    keys = sorted({r.image for r in records})
    held = {k for k, h in zip(keys, key_hash(keys, salt)) if h < fraction}
    return [r for r in records if r.image not in held]


def prepare_shared(cfg: AblationConfig, timings: Timings) -> Shared:
    from pipeline.evaluate.llm import build_tiny_llm
    from pipeline.quantize.outputs import OutputDirs
    from pipeline.scenes.corpus import generate
    from pipeline.scenes.dialogues import WORDS
    from schemas.quantize import QuantizeConfig

    seconds = {}
    t = time.time()
    corpus = generate(ScenesConfig(out=storage.join(cfg.out, "corpus"), **cfg.scenes.model_dump(mode="json"), **_storage(cfg)))
    seconds["scenes"] = timings.record("scenes", time.time() - t, not corpus.get("reused"))

    t = time.time()
    fitted = cfg.quantizer is None and not storage.exists(storage.join(cfg.out, "quantizer", "kmeans.safetensors"), cfg.storage)
    q = _quantizer(cfg, cfg.out)
    seconds["quantizer_fit"] = timings.record("quantizer_fit", time.time() - t, fitted)
    t = time.time()
    _ensure_ray(cfg)
    qcfg = QuantizeConfig(inputs=corpus["shards"], out=storage.join(cfg.out, "codes"), quantizer=q, batch_size=64,
                          workers=1, cpus=1.0, cpus_per_reader=1.0, **_storage(cfg))
    summary = _stage("quantize", qcfg)
    written = summary.totals.get("rows_written", summary.rows_written)  # all runs: a re-run writes nothing new
    if summary.failed or written != corpus["images"]:
        raise InputError(f"quantize wrote {written} of {corpus['images']} images "
                         f"(rejected {summary.rows_rejected}, failed shards {list(summary.failed)})")
    seconds["quantize"] = timings.record("quantize", time.time() - t, summary.done > 0)

    t = time.time()
    llm_dir = storage.join(cfg.out, "llm")
    built = cfg.llm.source == "tiny" and not storage.exists(storage.join(llm_dir, "vbpe_llm.json"), cfg.storage)
    if cfg.llm.source == "tiny":
        records = training_records(_records(corpus["conversations"], cfg.storage), cfg.heldout_fraction, cfg.heldout_salt)
        llm_info = build_tiny_llm(llm_dir, WORDS, cfg.llm.tiny, records, cfg.seed, cfg.storage)
    else:
        llm_dir, llm_info = cfg.llm.source, {"source": cfg.llm.source}
    seconds["llm"] = timings.record("llm", time.time() - t, built)
    qinfo = {"kind": q.kind, "fingerprint": summary.fingerprint,
             **({"codebook": q.codebook, "codebook_size": q.codebook_size, "patch_size": q.patch_size}
                if q.kind == "kmeans" else {})}
    return Shared(corpus, qinfo, OutputDirs(qcfg.out).grids_dir, llm_dir, llm_info, seconds)


# ---------------------------------------------------------------- per vocabulary

def _text_vocab_size(llm_dir: str, options: StorageOptions | None) -> int:
    from transformers import AutoConfig

    with storage.local_dir(llm_dir, options) as d:
        return int(AutoConfig.from_pretrained(d).get_text_config().vocab_size)


def prepare_vocabulary(cfg: AblationConfig, shared: Shared, merges: int, timings: Timings) -> dict:
    """Learn (held-out images excluded), tokenize, extend the LLM: the arm's base model."""
    from pipeline.bpe.vocab import Vocabulary
    from pipeline.train.driver import run_init
    from schemas.layout import IdLayout
    from schemas.learn import LearnConfig
    from schemas.tokenize import TokenizeConfig

    root = storage.join(cfg.out, "vocab", f"M{merges}")
    vocab_path = storage.join(root, "vocab.json")
    seconds = {}
    t = time.time()
    learned = not storage.exists(vocab_path, cfg.storage)
    if not learned:
        vocab = Vocabulary.load(vocab_path, cfg.storage)
    else:
        vocab = _stage("learn", LearnConfig(inputs=[shared.grids], out=vocab_path, merges=merges, alpha_rel=cfg.alpha_rel,
                                  sigma=cfg.sigma, holdout_fraction=cfg.heldout_fraction,
                                  holdout_salt=cfg.heldout_salt, checkpoint_every=0, progress=False,
                                  **_storage(cfg))).vocab
    seconds["learn"] = timings.record(f"M{merges}/learn", time.time() - t, learned)

    t = time.time()
    layout = IdLayout(text_vocab_size=_text_vocab_size(shared.llm, cfg.storage), codebook_size=vocab.codebook_size,
                      num_merges=len(vocab.merges))
    tok = _stage("tokenize", TokenizeConfig(inputs=[shared.grids], vocab=vocab_path, out=storage.join(root, "tokens"),
                                            layout=layout, **_storage(cfg)))
    if tok.failed or tok.totals.get("rows_written", tok.rows_written) != shared.corpus["images"]:
        raise InputError(f"tokenize ({merges} merges) failed or lost rows: {tok.to_json()}")
    seconds["tokenize"] = timings.record(f"M{merges}/tokenize", time.time() - t, tok.done > 0)

    t = time.time()
    train_cfg = train_config(cfg, shared, root, tok.data, storage.join(tok.root, "layout.yaml"), "unused", 1.0)
    init = run_init(train_cfg)
    seconds["init"] = timings.record(f"M{merges}/init", time.time() - t, not init.get("skipped"))
    c = vocab.corpus
    return {
        "merges": len(vocab.merges), "requested_merges": merges, "vocab": vocab_path, "tokens": tok.data,
        "layout": storage.join(tok.root, "layout.yaml"), "base": train_cfg.model, "alpha": vocab.alpha,
        "learned_on_grids": c.grids, "learner_held_out": c.held_out, "init": init, "seconds": seconds,
    }


def train_config(cfg: AblationConfig, shared: Shared, root: str, tokens: str, layout: str, output: str, scale: float):
    from schemas.train import ConversationSource, DataConfig, InitConfig, TrainConfig

    stages = {s: getattr(cfg, s).model_copy(update={"epochs": getattr(cfg, s).epochs * scale}) for s in STAGES}
    return TrainConfig(
        model=storage.join(root, "base"),
        output=output,
        data=DataConfig(conversations=[ConversationSource(path=shared.corpus["conversations"])], corpus=[tokens],
                        image_key="exact", max_length=cfg.max_length, overflow="drop",
                        heldout_fraction=cfg.heldout_fraction, heldout_salt=cfg.heldout_salt),
        init=InitConfig(source_model=shared.llm, layout=layout, rule=cfg.llm.init_rule, seed=cfg.seed),
        workers=cfg.workers, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed, storage=cfg.storage, **stages,
    )


# ---------------------------------------------------------------- per arm

def _mean_tokens(output: str, options: StorageOptions | None) -> float:
    from pipeline.train.paths import RunPaths

    with storage.open_file(RunPaths(output).data.sequences, options=options) as f:
        n = pq.read_table(f, columns=["n_tokens"]).column("n_tokens").to_numpy()
    return float(n.mean())


def _keys(path: str, options: StorageOptions | None) -> set[str]:
    with storage.open_file(path, options=options) as f:
        return {k for k in pq.read_table(f, columns=["image"]).column("image").to_pylist() if k}


def _steps_rows(output: str, stage: str, options: StorageOptions | None) -> list[dict]:
    from pipeline.train.paths import RunPaths

    text = storage.read_text(RunPaths(output).steps(stage), options)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _tokens_per_image(tokens_dir: str, heldout: set[str], options: StorageOptions | None) -> dict[str, float]:
    files = storage.expand([tokens_dir], (".parquet",), options)
    tables = []
    for f in files:
        with storage.open_file(f, options=options) as fh:
            tables.append(pq.read_table(fh, columns=["key", "n_tokens"]))
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    n = np.concatenate([t.column("n_tokens").to_numpy() for t in tables])
    held = np.array([k in heldout for k in keys])
    return {"all": float(n.mean()), "heldout": float(n[held].mean()) if held.any() else None,
            "train": float(n[~held].mean()) if (~held).any() else None}


def _figures(model: dict) -> dict:
    return {
        "answer_loss": model["answer_loss"], "answer_accuracy": model["answer_accuracy"], "answers": model["answers"],
        "by_type": {ABBREV[c]: {"answer_loss": v["answer_loss"], "answer_accuracy": v["answer_accuracy"],
                                "answers": v["answers"]} for c, v in model["by_type"].items()},
    }


def _digest(keys: set[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def run_arm(cfg: AblationConfig, shared: Shared, arm: Arm, vocab: dict, scale: float) -> dict:
    """Train the three stages and score every model on the held-out images; the arm's figures."""
    from pipeline.evaluate.heldout import run_eval
    from pipeline.train.paths import RunPaths
    from pipeline.train.driver import run_stage

    tcfg = arm_train_config(cfg, shared, arm, vocab, scale)
    output = tcfg.output
    done = {}
    for stage in STAGES:
        log.info("arm %s: %s", arm.name, stage)
        done[stage] = run_stage(tcfg, stage)
    ev = run_eval(tcfg, batch_size=cfg.eval_batch_size)
    # from what train and eval store, so a resumed arm reports the time it took when it ran
    seconds = {"train": sum(d.get("fit_seconds") or 0.0 for d in done.values()),
               "eval": sum(m.get("seconds") or 0.0 for m in ev["models"].values())}

    paths = RunPaths(output)
    held_keys, train_keys = _keys(paths.data.heldout, cfg.storage), _keys(paths.data.sequences, cfg.storage)
    if held_keys & train_keys:
        raise RuntimeError(f"arm {arm.name}: {len(held_keys & train_keys)} held-out images are in the training data")
    steps = {s: _steps_rows(output, s, cfg.storage) for s in STAGES}
    stage_summary = {s: {"steps": len(steps[s]), "samples": steps[s][-1]["samples"] if steps[s] else 0,
                         "tokens": int(sum(r["tokens"] for r in steps[s])),
                         "target_tokens": int(sum(r["target_tokens"] for r in steps[s])),
                         "final_loss": done[s].get("final_loss"), "heldout_loss": done[s].get("heldout_loss"),
                         "fit_seconds": done[s].get("fit_seconds"), "executor": done[s].get("executor")} for s in STAGES}
    tpi = _tokens_per_image(vocab["tokens"], held_keys, cfg.storage)
    own = {k: round(v, 2) for k, v in seconds.items()}
    if arm.budget == "steps":  # the tokens-budget arm reuses the vocabulary of the steps arm with the same M
        own = {**{k: round(v, 2) for k, v in vocab["seconds"].items()}, **own}
    return {
        "name": arm.name,
        "merges": vocab["merges"],
        "budget": arm.budget,
        "epochs_scale": scale,
        "tokens_per_image": tpi["all"],
        "tokens_per_image_heldout": tpi["heldout"],
        "train_tokens": int(sum(v["tokens"] for v in stage_summary.values())),
        "train_target_tokens": int(sum(v["target_tokens"] for v in stage_summary.values())),
        "steps": int(sum(v["steps"] for v in stage_summary.values())),
        "seconds": round(sum(own.values()), 2),
        "seconds_by_part": own,
        "heldout": _figures(ev["models"]["stage3"]),
        "by_model": {name: _figures(m) for name, m in ev["models"].items()},
        "stages": stage_summary,
        "heldout_keys": len(held_keys),
        "train_keys": len(train_keys),
        "keys_digest": {"heldout": _digest(held_keys), "train": _digest(train_keys)},
        "vocab": vocab["vocab"],
        "run": output,
        "resumed": all(d.get("skipped") for d in done.values()) and not ev.get("scored"),
    }


def arm_train_config(cfg: AblationConfig, shared: Shared, arm: Arm, vocab: dict, scale: float):
    root = storage.join(cfg.out, "vocab", f"M{arm.merges}")
    output = storage.join(cfg.out, "arms", arm.name)
    tcfg = train_config(cfg, shared, root, vocab["tokens"], vocab["layout"], output, scale)
    storage.write_text(storage.join(output, "train.yaml"), tcfg.to_yaml(), cfg.storage)
    return tcfg


def _run_arms(cfg: AblationConfig, shared: Shared, jobs: list[tuple[Arm, dict, float]]) -> list[dict]:
    """The arms side by side, each as a Ray task driving its own Ray Train runs (they queue for CPUs/GPUs)."""
    import ray

    if not cfg.parallel_arms or len(jobs) == 1:
        return [run_arm(cfg, shared, arm, vocab, scale) for arm, vocab, scale in jobs]
    at_once = arms_at_once(cfg, ray.cluster_resources())
    log.info("%d arms, %d at a time", len(jobs), at_once)
    # an arm training locally is its own rank and holds its CPUs; else it only drives Ray Train runs
    task = ray.remote(num_cpus=cfg.workers.cpus if trains_locally(cfg) else 0, max_retries=0)(_arm_task)
    pending = [(i, (cfg.model_dump(mode="json"), shared.__dict__, arm.__dict__, vocab, scale))
               for i, (arm, vocab, scale) in enumerate(jobs)]
    running: dict = {}
    results: list[dict | None] = [None] * len(jobs)
    while pending or running:
        while pending and len(running) < at_once:
            i, args = pending.pop(0)
            running[task.remote(*args)] = i
        (ref,), _ = ray.wait(list(running), num_returns=1)
        results[running.pop(ref)] = ray.get(ref)  # a failed arm stops the run here
    return results


def trains_locally(cfg: AblationConfig) -> bool:
    """Whether each arm's stages train in the arm's own process (`workers.executor` local, or auto with no workers)."""
    from pipeline import execution

    return execution.plan(cfg.workers).mode == "local"


def arms_at_once(cfg: AblationConfig, resources: dict) -> int:
    """Arms whose Ray Train workers and data readers fit in the cluster together. More would deadlock: every
    arm's workers would hold their CPUs while the tasks streaming their sequences wait for one."""
    w = cfg.workers
    ranks, readers = (1, 0.0) if trains_locally(cfg) else (w.workers, w.data_cpus)  # local: the arm's task is its rank
    need = {"CPU": ranks * (w.cpus + readers)}
    if w.use_gpu:
        need["GPU"] = ranks * w.gpus_per_worker
    fits = [int(resources.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def _arm_task(cfg: dict, shared: dict, arm: dict, vocab: dict, scale: float) -> dict:
    import logging as _logging

    if not _logging.getLogger().handlers:
        _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    c = AblationConfig.model_validate(cfg)
    return run_arm(c, Shared(**shared), Arm(**arm), vocab, scale)


# ---------------------------------------------------------------- baselines and checks

def majority_baseline(conversations: str, heldout: set[str], options: StorageOptions | None = None) -> dict:
    """Accuracy of answering every held-out question with the most common training answer to the same
    question text: what a model gets without looking at the image."""
    from pipeline.evaluate.answers import normalise

    records = _records(conversations, options)
    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        if r.image not in heldout:
            for q, a in _qa(r):
                answers[q][normalise(a)] += 1
    right = collections.Counter()
    total = collections.Counter()
    for r in records:
        if r.image in heldout:
            for q, a in _qa(r):
                guess = answers[q].most_common(1)[0][0] if answers[q] else ""
                total[r.category] += 1
                right[r.category] += int(guess == normalise(a))
    return {"answer_accuracy": sum(right.values()) / max(1, sum(total.values())),
            "by_type": {ABBREV[c]: {"answer_accuracy": right[c] / total[c]} for c in CATEGORIES if total[c]}}


def _qa(record) -> list[tuple[str, str]]:
    """(question with the earlier answers as context, answer) for every answer of a record."""
    out, context = [], []
    for t in record.turns:
        if t.role == "assistant":
            out.append((" | ".join(context), t.content))
        context.append(t.content.replace("<image>", "").strip())
    return out


def _check_same_split(arms: list[dict], held: set[str], vocabs: dict[int, dict], cfg: AblationConfig) -> dict:
    from pipeline.codegrids import key_hash

    for a in arms[1:]:
        if a["keys_digest"] != arms[0]["keys_digest"]:
            raise RuntimeError(f"arm {a['name']} trained or evaluated on other images than arm {arms[0]['name']}")
    hashes = key_hash(sorted(held), cfg.heldout_salt)
    learner_excluded = bool((hashes < cfg.heldout_fraction).all())
    if not learner_excluded or any(v["learner_held_out"] != len(held) for v in vocabs.values()):
        raise RuntimeError("the images held out of training are not exactly those held out of vocabulary learning")
    return {"heldout_images_in_training": 0, "heldout_images_excluded_from_vocabulary": True,
            "quantizer_fitted_on": "separate scenes (another seed)" if cfg.quantizer is None else "given",
            "learner_held_out_grids": {m: v["learner_held_out"] for m, v in vocabs.items()}}


def compare_to_vq(results: list[dict], options: StorageOptions | None = None) -> list[dict]:
    """Each BPE arm against the VQ-only arm on the same held-out answers after stage 3 (paired)."""
    from pipeline.evaluate.heldout import read_answers
    from pipeline.evaluate.paired import paired

    vq = read_answers(results[0]["run"], "stage3", options)
    out = []
    for arm in results[1:]:
        other = read_answers(arm["run"], "stage3", options)
        entry = {"first": results[0]["name"], "second": arm["name"], "model": "stage3",
                 **paired({k: v[1] for k, v in vq.items()}, {k: v[1] for k, v in other.items()}), "by_type": {}}
        for c in CATEGORIES:
            a = {k: v[1] for k, v in vq.items() if v[0] == c}
            if a:
                entry["by_type"][ABBREV[c]] = paired(a, {k: v[1] for k, v in other.items() if v[0] == c})
        out.append(entry)
    return out


def _steps_equal(arms: list[dict]) -> bool:
    steps = {a["stages"][s]["steps"] for a in arms if a["budget"] == "steps" for s in STAGES}
    per_arm = {tuple(a["stages"][s]["steps"] for s in STAGES) for a in arms if a["budget"] == "steps"}
    return len(per_arm) == 1 and bool(steps)


# ---------------------------------------------------------------- the command

def _seconds(shared: Shared, vocabs: dict, arms_wall: float, this_run: float, parallel: bool) -> dict:
    """`total`: what producing these results took (resumed parts count with the time they took when they ran)."""
    vocabularies = round(sum(sum(v["seconds"].values()) for v in vocabs.values()), 2)
    total = sum(shared.seconds.values()) + vocabularies + arms_wall
    return {"total": round(total, 2), **shared.seconds, "vocabularies": vocabularies, "arms_wall": arms_wall,
            "parallel_arms": parallel, "this_run": round(this_run, 2)}


def run_ablation(cfg: AblationConfig) -> dict:
    from pipeline.evaluate import report
    from pipeline.train.paths import RunPaths
    from pipeline.train.driver import run_prepare

    t0 = time.time()
    check_run_directory(cfg)
    timings = Timings(cfg.out, cfg.storage)
    shared = prepare_shared(cfg, timings)
    arms = arms_of(cfg)
    vocabs: dict[int, dict] = {}
    for arm in arms:
        if arm.merges not in vocabs:
            vocabs[arm.merges] = prepare_vocabulary(cfg, shared, arm.merges, timings)
    mean_tokens = {}
    for arm in arms:  # prepared data first: the tokens budget needs the sequence lengths of every vocabulary
        tcfg = arm_train_config(cfg, shared, arm, vocabs[arm.merges], 1.0)
        run_prepare(tcfg)
        mean_tokens[arm.merges] = _mean_tokens(tcfg.output, cfg.storage)
    jobs = [(arm, vocabs[arm.merges], 1.0 if arm.budget == "steps" else mean_tokens[0] / mean_tokens[arm.merges])
            for arm in arms]
    t = time.time()
    results = _run_arms(cfg, shared, jobs)
    arms_seconds = time.time() - t
    held = _keys(RunPaths(results[0]["run"]).data.heldout, cfg.storage)
    checks = _check_same_split(results, held, vocabs, cfg)
    checks["equal_steps"] = _steps_equal(results)
    out = {
        "format": FORMAT,
        "seed": cfg.seed,
        "scenes_seed": cfg.scenes.seed,
        "heldout_keys": results[0]["heldout_keys"],
        "train_keys": results[0]["train_keys"],
        "heldout_fraction": cfg.heldout_fraction,
        "arms": results,
        "baselines": {"majority_answer": majority_baseline(shared.corpus["conversations"], held, cfg.storage)},
        "comparisons": compare_to_vq(results, cfg.storage),
        "checks": checks,
        "corpus": {"images": shared.corpus["images"], "image_size": cfg.scenes.image_size,
                   "conversations": shared.corpus["records_per_type"], "answers": shared.corpus["answers_per_type"]},
        "quantizer": shared.quantizer,
        "llm": shared.llm_info,
        "config": cfg.model_dump(mode="json"),
        "seconds": _seconds(shared, vocabs, timings.record("arms_wall", arms_seconds, any(not a["resumed"] for a in results)),
                            time.time() - t0, cfg.parallel_arms),
    }
    out["files"] = report.write(out, cfg.out, cfg.storage)
    return out
