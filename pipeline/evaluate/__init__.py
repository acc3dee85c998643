"""Does the vocabulary help? Held-out evaluation of trained models and the with/without visual-BPE ablation.

  answers.py   answer spans of prepared sequences, normalised exact match
  scoring.py   one model on held-out sequences: answer-token loss and greedy exact match, per data type
  heldout.py   `vbpe train eval`: the base model and each completed stage of a run -> eval/heldout.json
  paired.py    two runs on the same held-out answers: difference with its interval, exact McNemar test
  llm.py       the ablation's text LLM when none is given: a tiny Llama warmed up on text alone
  ablation.py  `vbpe eval ablation`: one corpus, arms that differ only in the vocabulary
  report.py    ablation.json -> Markdown / text tables and a plot; the section of `vbpe report`
  cli.py       `vbpe eval ablation`, and the flags and output of `vbpe train eval`
"""
