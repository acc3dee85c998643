"""Three-stage curriculum training of a causal LM on visual tokens (Ray Train).

init.py       extend a HF model + tokenizer by the id layout (`vbpe train init`)
records.py    LLaVA-style conversation records -> normalised turns, with counted rejections
corpus.py     image key -> LLM ids from the tokenized corpus
chat.py       turns -> token ids + answer mask, with the tokenizer's own chat template
prepare.py    records -> training sequences Parquet (labels, truncation rule, rejects)
curriculum.py per-stage mixture -> deterministic, category-ordered sample plan
freeze.py     which parameters each stage trains (old vocabulary rows frozen by construction)
state.py      trainable tensors + optimizer state <-> safetensors checkpoint files
loop.py       the per-worker training loop
job.py        the typed job a worker gets for one stage, and the loop's hooks
driver.py     one TorchTrainer run per stage, skip / resume / chain
api.py        run(config, step) -> summary: the stage contract used by the CLI and the jobs
paths.py      the run directory's file names
"""
