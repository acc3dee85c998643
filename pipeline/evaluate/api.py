"""The ablation as a stage (`pipeline/stage.py`): `run(config) -> AblationSummary`, so `vbpe eval ablation`,
`python -m jobs.ablation` and `vbpe submit ablation` share the runner's metrics file, exit statuses and
one-line errors with every other stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.evaluate import AblationConfig


@dataclass
class AblationSummary:
    result: dict  # what ablation.json holds, plus the files written

    ok = True  # an ablation either finishes every arm or raises

    def to_json(self) -> dict[str, Any]:
        r = self.result
        arms = [{k: a[k] for k in ("name", "merges", "tokens_per_image", "train_tokens", "steps", "seconds", "resumed")
                 if k in a} | {"heldout": {k: a["heldout"][k] for k in ("answer_loss", "answer_accuracy")}}
                for a in r["arms"]]
        return {"ablation": r["files"]["ablation.json"], "files": r["files"], "arms": arms,
                "comparisons": r["comparisons"], "heldout_keys": r["heldout_keys"], "train_keys": r["train_keys"],
                "seconds": r["seconds"]}

    def lines(self) -> list[str]:
        from pipeline.evaluate.report import table_text

        return [*table_text(self.result).splitlines(), f"ablation.json: {self.result['files']['ablation.json']}"]

    def metrics(self) -> dict[str, Any]:
        """Rows are the corpus's images: each one is a held-out or a training image of every arm."""
        r = self.result
        images = r["heldout_keys"] + r["train_keys"]
        return {"rows_in": images, "rows_out": images, "arms": len(r["arms"]),
                "heldout_keys": r["heldout_keys"], "train_keys": r["train_keys"]}


def run(cfg: AblationConfig) -> AblationSummary:
    from pipeline.evaluate.ablation import run_ablation

    return AblationSummary(run_ablation(cfg))
