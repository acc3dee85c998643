"""The report page: one self-contained HTML file (PNGs inlined), so it opens from S3 or an e-mail."""
from __future__ import annotations

import base64
import html
from typing import Any

from pipeline import storage


def _img(path: str, alt: str) -> str:
    with storage.open_file(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _overlap(match: bool | None) -> str:
    if match is True:
        return ("<b>these are the training grids</b>: the sample was seen by the learner, so usage and "
                "dead-token figures are optimistic")
    if match is False:
        return "not the training grids (their fingerprint differs from the vocabulary's corpus)"
    return "overlap with the training corpus unknown"


def page(summary: dict[str, Any], images: dict[str, str], sections: str = "") -> str:
    """`images` maps a title to a PNG path; the atlas first. `sections`: extra HTML (held-out evaluation)."""
    v, s, c, d = summary["vocab"], summary["sample"], summary["compression"], summary["dead"]
    rows = [
        ("vocabulary", f"{html.escape(str(v['path']))} (fingerprint {v['fingerprint']})"),
        ("codebook V / merges", f"{v['codebook_size']} / {v['merges']} (requested {v['requested_merges']}; stopped: {html.escape(v['stopped'] or 'n/a')})"),
        ("alpha / sigma / min F", f"{v['alpha']:.6g} (alpha_rel {v['alpha_rel']}) / {v['sigma']} / {v['min_frequency']}"),
        ("held-out sample", f"{s['held_out_grids']} of {s['rows']} grids (fraction {s['holdout_fraction']}, salt {html.escape(s['holdout_salt'])}); "
                            + _overlap(s['grids_match_training_corpus'])),
        ("tokens per grid", f"{c['cells_per_grid']:.1f} cells -> {c['final_holdout']:.1f} tokens on the sample"
                            + (f", {c['final_train']:.1f} on the training grids" if c["final_train"] is not None else "")),
        ("dead learned tokens", f"{d['learned_unused']} of {d['learned_ids']} ({_pct(d['dead_rate'])}); rare (&lt; {d['rare_below']} uses): {_pct(d['rare_rate'])}"),
        ("dead base codes", f"{d['base_unused']} of {d['base_ids']} ({_pct(d['base_dead_rate'])})"),
        ("exemplars", html.escape(str(summary["atlas"]["exemplars"].get("status")))),
    ]
    table = "\n".join(f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in rows)
    kinds = "\n".join(
        f"<tr><td>{html.escape(name)}</td><td>{k['ids']}</td><td>{_pct(k['share_of_vocabulary'])}</td>"
        f"<td>{k['occurrences']}</td><td>{_pct(k['share_of_tokens'])}</td></tr>"
        for name, k in summary.get("merge_kinds", {}).items())
    tok_rows = []
    for rank, t in enumerate(summary["atlas"]["tokens"], 1):
        ex = sum(e["status"] == "ok" for e in t["exemplars"])
        s_val = "" if t["consistency"] is None else f"{t['consistency']:.3f}"
        tok_rows.append(
            f"<tr><td>{rank}</td><td>{t['id']}</td><td>{t.get('kind') or 'base'}</td><td>{t['pair'] or ''}</td>"
            f"<td>{t['offset'] or ''}</td>"
            f"<td>{t['frequency'] if t['frequency'] is not None else ''}</td><td>{s_val}</td><td>{t['usage']}</td>"
            f"<td>{t['size']}</td><td>{t['distinct_shapes']}</td><td>{_pct(t['top_shape_share'])}</td>"
            f"<td>{t['top_shape_is_canonical']}</td><td>{ex}</td></tr>")
    figures = "\n".join(f"<h2>{html.escape(title)}</h2>\n{_img(path, title)}" for title, path in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbpe report {v['fingerprint']}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 13px; }}
th {{ background: #f4f4f2; }}
img {{ max-width: 100%; border: 1px solid #e4e4e0; }}
</style></head><body>
<h1>vbpe vocabulary report</h1>
<table>{table}</table>
<h2>What the learned tokens are</h2>
<p>flat: every code in the token is the same (runs and patches of one code, e.g. (a, a));
repeat: two copies of one multi-code token; mixed: two or more distinct codes. Atlas cells are drawn
{html.escape(str(summary["atlas"].get("appearance", "")))}.</p>
<table><tr><th>kind</th><th>learned ids</th><th>of the vocabulary</th><th>occurrences on the sample</th>
<th>of all tokens</th></tr>
{kinds}</table>
{figures}
{sections}
<h2>Atlas tokens</h2>
<table><tr><th>#</th><th>id</th><th>kind</th><th>pair</th><th>u*</th><th>F</th><th>S</th><th>used</th><th>cells</th>
<th>shapes</th><th>top shape</th><th>canonical</th><th>crops</th></tr>
{chr(10).join(tok_rows)}</table>
<p>Figures as JSON: summary.json. Shapes are read from the encoder's segmentation of the held-out
sample; "canonical" is the shape made by attaching every part at its merge's mode offset u*.</p>
</body></html>
"""
