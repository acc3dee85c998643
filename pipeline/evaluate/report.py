"""ablation.json -> a README-ready Markdown table, a plain-text table for the terminal, and a plot."""
from __future__ import annotations

import json
import os
import tempfile

from pipeline import storage

TYPES = ("FD", "PD", "RD", "ID")
STAGE_NAMES = ("base", "stage1", "stage2", "stage3")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _label(arm: dict) -> str:
    if arm["merges"] == 0:
        return "VQ only (0 merges)"
    return f"visual BPE, {arm['merges']} merges" + (" (equal tokens)" if arm["budget"] == "tokens" else "")


def rows(result: dict) -> list[list[str]]:
    head = ["arm", "tokens / image", "steps", "train tokens", "held-out loss", "accuracy %"] + [f"{t} %" for t in TYPES] + ["seconds"]
    out = [head]
    for a in result["arms"]:
        h = a["heldout"]
        out.append([_label(a), f"{a['tokens_per_image']:.1f}", str(a["steps"]), f"{a['train_tokens']:,}",
                    _num(h["answer_loss"]), _pct(h["answer_accuracy"])]
                   + [_pct(h["by_type"].get(t, {}).get("answer_accuracy")) for t in TYPES] + [f"{a['seconds']:.0f}"])
    b = result["baselines"]["majority_answer"]
    out.append(["no image: most common training answer", "-", "-", "-", "-", _pct(b["answer_accuracy"])]
               + [_pct(b["by_type"].get(t, {}).get("answer_accuracy")) for t in TYPES] + ["-"])
    return out


def comparison_lines(result: dict) -> list[str]:
    """One line per BPE arm: its accuracy minus the VQ-only arm's on the same answers, with McNemar's p."""
    out = []
    names = {a["name"]: _label(a) for a in result["arms"]}
    for c in result.get("comparisons", []):
        lo, hi = c["difference_95"]
        out.append(f"{names[c['second']]} vs {names[c['first']]}: {100 * c['difference']:+.1f} points "
                   f"(95% interval {100 * lo:+.1f} to {100 * hi:+.1f}; {c['only_second_right']} answers right only "
                   f"with BPE, {c['only_first_right']} only without; McNemar p = {c['mcnemar_p']:.3g}, "
                   f"{c['questions']} paired answers)")
    return out


def table_markdown(result: dict) -> str:
    r = rows(result)
    lines = ["| " + " | ".join(r[0]) + " |", "|" + "|".join("---" for _ in r[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in r[1:]]
    c = result["corpus"]
    lines.append("")
    lines += [f"- {line}" for line in comparison_lines(result)]
    lines.append("")
    lines.append(f"Held-out: {result['heldout_keys']} images never used for the vocabulary or training "
                 f"({result['train_keys']} training images); {c['images']} generated scenes of {c['image_size']} px; "
                 f"seed {result['seed']}; exact match after normalisation, greedy decoding.")
    return "\n".join(lines)


def table_text(result: dict) -> str:
    r = rows(result)
    widths = [max(len(row[i]) for row in r) for i in range(len(r[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in r]
    return "\n".join(lines + comparison_lines(result))


def plot(result: dict, path: str, options=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = result["arms"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    groups = ["all", *TYPES]
    x = np.arange(len(groups))
    width = 0.8 / (len(arms) + 1)
    for i, a in enumerate(arms):
        h = a["heldout"]
        vals = [h["answer_accuracy"]] + [h["by_type"].get(t, {}).get("answer_accuracy") for t in TYPES]
        ax1.bar(x + i * width, [100 * (v or 0) for v in vals], width, label=_label(a))
    b = result["baselines"]["majority_answer"]
    vals = [b["answer_accuracy"]] + [b["by_type"].get(t, {}).get("answer_accuracy") for t in TYPES]
    ax1.bar(x + len(arms) * width, [100 * (v or 0) for v in vals], width, color="lightgrey", label="no image (majority)")
    ax1.set_xticks(x + width * len(arms) / 2, groups)
    ax1.set_ylabel("held-out exact-match accuracy (%)")
    ax1.set_title("after stage 3")
    ax1.legend(fontsize=7)
    for a in arms:
        losses = [a["by_model"].get(s, {}).get("answer_loss") for s in STAGE_NAMES]
        ax2.plot(STAGE_NAMES, [np.nan if v is None else v for v in losses], marker="o", label=_label(a))
    ax2.set_ylabel("held-out answer-token loss")
    ax2.set_title("through the curriculum")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "plot.png")
        fig.savefig(local, dpi=120)
        plt.close(fig)
        with open(local, "rb") as src, storage.open_file(path, "wb", options) as dst:
            dst.write(src.read())


def write(result: dict, out: str, options=None) -> dict[str, str]:
    files = {name: storage.join(out, name) for name in ("ablation.json", "ablation.png", "ablation.md")}
    result = {**result, "files": files}
    storage.write_text(files["ablation.md"], table_markdown(result) + "\n", options)
    plot(result, files["ablation.png"], options)
    storage.write_text(files["ablation.json"], json.dumps(result, indent=1) + "\n", options)
    return files


# ---------------------------------------------------------------- the section of `vbpe report`

def heldout_plot(models: dict[str, dict], path: str) -> None:
    """Held-out accuracy per data type and answer loss, model by model (base, stage1, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    types = ("foundation", "perception", "reasoning", "instruction")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for t, abbrev in zip(types, TYPES):
        vals = [models[n].get("by_type", {}).get(t, {}).get("answer_accuracy") for n in names]
        ax1.plot(names, [100 * v if v is not None else float("nan") for v in vals], marker="o", label=abbrev)
    ax1.plot(names, [100 * (models[n]["answer_accuracy"] or 0) for n in names], marker="s", color="black", label="all")
    ax1.set_ylabel("held-out exact match (%)")
    ax1.legend(fontsize=7)
    ax2.plot(names, [models[n]["answer_loss"] for n in names], marker="o", color="black")
    ax2.set_ylabel("held-out answer-token loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html_table(rows_: list[list[str]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows_[0])
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows_[1:])
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _inline_png(path: str, alt: str) -> str:
    import base64
    import html

    with storage.open_file(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def heldout_rows(models: dict[str, dict]) -> list[list[str]]:
    types = ("foundation", "perception", "reasoning", "instruction")
    out = [["model", "answers", "accuracy %", "loss"] + [f"{t} %" for t in TYPES]]
    for name, m in models.items():
        by = m.get("by_type", {})
        out.append([name, str(m["answers"]), _pct(m["answer_accuracy"]), _num(m["answer_loss"])]
                   + [_pct(by.get(t, {}).get("answer_accuracy")) for t in types])
    return out


def html_section(paths: list[str], workdir: str, options=None) -> tuple[str, dict[str, str]]:
    """HTML for `vbpe report --evaluation ...`: each held-out results file (heldout.json of `vbpe train
    eval`) or ablation.json, read with the report's storage options, as a table and a plot.
    Returns (html, {file name: local png path})."""
    import html

    parts, files = ["<h2>Held-out evaluation</h2>"], {}
    for i, path in enumerate(paths):
        data = json.loads(storage.read_text(path, options))
        fmt = data.get("format", "")
        if fmt.startswith("vbpe.ablation"):
            png = os.path.join(workdir, f"evaluation_{i}_ablation.png")
            plot(data, png)
            parts.append(f"<h3>Ablation: {html.escape(path)}</h3>" + _html_table(rows(data)) + _inline_png(png, "ablation"))
        elif fmt.startswith("vbpe.heldout"):
            png = os.path.join(workdir, f"evaluation_{i}_heldout.png")
            heldout_plot(data["models"], png)
            parts.append(f"<h3>{html.escape(path)}: {data['heldout_sequences']} held-out sequences of "
                         f"{data['heldout_images']} images</h3>" + _html_table(heldout_rows(data["models"]))
                         + _inline_png(png, "held-out evaluation"))
        else:
            from schemas.base import InputError

            raise InputError(f"{path} is neither a `vbpe train eval` heldout.json nor an ablation.json")
        files[os.path.basename(png)] = png
    parts.append("<p>Exact match after normalisation (lower case, no punctuation or articles), greedy decoding; "
                 "loss: mean cross-entropy over answer tokens, teacher-forced.</p>")
    return "\n".join(parts), files
