"""Does the vocabulary help? Held-out evaluation of trained models and the with/without visual-BPE ablation.

  answers.py   answer spans of prepared sequences, normalised exact match
  scoring.py   answer-token loss and greedy exact-match accuracy of one model, per data type
  models.py    which models `vbpe train eval` scores (the base model, each completed stage)
  ...
"""
