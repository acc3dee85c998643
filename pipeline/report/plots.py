"""The report's plots (matplotlib, Agg): each takes the same arrays the summary JSON holds.

Figures are saved at a fixed size (no tight bounding box) so their pixel size is predictable.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
WIDE = (9.0, 4.8)


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def compression(train: np.ndarray | None, holdout: np.ndarray, holdout_grids: int, path: str) -> None:
    """Mean tokens per grid after 0..M merges: the learner's training curve and the held-out one."""
    fig, ax = plt.subplots(figsize=WIDE)
    x = np.arange(len(holdout))
    if train is not None:
        ax.plot(np.arange(len(train)), train, lw=1.6, label="training grids (from the vocabulary)")
    ax.plot(x, holdout, lw=1.6, ls="--", label=f"held-out sample ({holdout_grids} grids, re-encoded)")
    if len(x) == 1:
        ax.scatter([0], holdout[:1], zorder=3)
        _empty(ax, "no merges: every cell is a token")
    ax.set_xlabel("merges applied")
    ax.set_ylabel("tokens per grid")
    ax.set_title("Compression curve")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.12)
    _save(fig, path)


def merge_scores(frequency: np.ndarray, consistency: np.ndarray, path: str) -> None:
    """F (log scale) and S of each merge over the merge index."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9.0, 6.4), sharex=True)
    k = np.arange(len(frequency))
    if len(k):
        a1.plot(k, frequency, lw=0.9)
        a1.set_yscale("log")
        a2.scatter(k, consistency, s=4, alpha=0.5, lw=0)
        if len(k) >= 25:
            w = max(5, len(k) // 50)
            med = np.array([np.median(consistency[max(0, i - w) : i + w + 1]) for i in range(len(k))])
            a2.plot(k, med, color="C3", lw=1.2, label=f"running median (+-{w})")
            a2.legend(loc="lower right")
    else:
        _empty(a1, "no merges")
        _empty(a2, "no merges")
    a1.set_ylabel("frequency F")
    a1.set_title("Merge scores over the merge index")
    a2.set_ylabel("spatial consistency S")
    a2.set_ylim(0, 1.05)
    a2.set_xlabel("merge index k (token id V + k)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.09, hspace=0.08)
    _save(fig, path)


def token_sizes(vocab_hist: dict[int, int], usage_hist: dict[int, int], path: str) -> None:
    """Token sizes in cells: over the learned vocabulary, and over token occurrences on the sample."""
    fig, ax = plt.subplots(figsize=WIDE)
    sizes = sorted(set(vocab_hist) | set(usage_hist))
    if sizes:
        x = np.arange(len(sizes))
        v = np.array([vocab_hist.get(s, 0) for s in sizes], float)
        u = np.array([usage_hist.get(s, 0) for s in sizes], float)
        ax.bar(x - 0.2, v / max(1.0, v.sum()), width=0.4, label=f"learned ids ({int(v.sum())})")
        ax.bar(x + 0.2, u / max(1.0, u.sum()), width=0.4, label=f"occurrences on the sample ({int(u.sum())})")
        step = max(1, len(sizes) // 30)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(s) for s in sizes[::step]])
        ax.legend(loc="upper right")
    else:
        _empty(ax, "no merges")
    ax.set_xlabel("token size (cells)")
    ax.set_ylabel("share")
    ax.set_title("Token sizes")
    ax.grid(alpha=0.3, axis="y")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.12)
    _save(fig, path)


def dead_tokens(points: list[dict], base_rate: float, rare_below: int, path: str) -> None:
    """Share of learned ids never used on the sample, for vocabularies of growing size."""
    fig, ax = plt.subplots(figsize=WIDE)
    if points:
        m = [p["merges"] for p in points]
        ax.plot(m, [p["dead_rate"] for p in points], marker="o", label="learned ids never used")
        last = points[-1]
        ax.annotate(f"{last['unused']} of {last['merges']} unused", (m[-1], last["dead_rate"]),
                    textcoords="offset points", xytext=(-8, 10), ha="right", fontsize=9)
        ax.plot(m, [p["rare_rate"] for p in points], marker="s", ls=":", label=f"learned ids used < {rare_below} times")
        if len(m) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(m)
        ax.set_xticklabels([str(v) for v in m])
    else:
        _empty(ax, "no merges")
    ax.axhline(base_rate, color="0.5", ls="--", lw=1, label=f"base codes never used ({base_rate:.1%})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("vocabulary size (merges)")
    ax.set_ylabel("share of ids")
    ax.set_title("Dead tokens on the held-out sample")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.12)
    _save(fig, path)
