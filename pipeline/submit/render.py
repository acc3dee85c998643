"""Render the cluster manifests in infra/: `${NAME}` / `${NAME:-default}` placeholders, envsubst style.

Strict on purpose: a parameter without a value (and no default) or a value for a parameter no
template uses is an error, and every rendered file must parse as YAML, so a typo never reaches
`kubectl apply`. Shell variables meant for the pod itself are written `$VAR` (no braces) or `$$`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import yaml

from schemas.base import ConfigError

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")
TEMPLATE_SUFFIXES = (".yaml", ".yml")


@dataclass
class Rendered:
    path: str  # relative to the infra root
    text: str

    def documents(self) -> list:
        return [d for d in yaml.safe_load_all(self.text) if d is not None]


def read_params(path: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; values may be quoted."""
    params = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
                raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            params[key] = value
    return params


def templates(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames) if f.endswith(TEMPLATE_SUFFIXES))
    return sorted(out)


def placeholders(text: str) -> dict[str, str | None]:
    """Names used in a template, with their default (None when there is none)."""
    found: dict[str, str | None] = {}
    for m in PLACEHOLDER.finditer(text):
        if found.get(m.group(1)) is None:
            found[m.group(1)] = m.group(2)
    return found


def render_text(text: str, params: dict[str, str], where: str = "<template>") -> str:
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1) not in params and m.group(2) is None})
    if missing:
        raise ConfigError(f"{where}: no value for {', '.join(missing)} (set them in the params file or with --set)")
    return PLACEHOLDER.sub(lambda m: params.get(m.group(1), m.group(2) or ""), text)


def render_all(root: str, params: dict[str, str], only: list[str] | None = None) -> list[Rendered]:
    """Every template under `root`, or only those under the `only` subdirectories (e.g. ["k8s"]).

    Parameters are checked against all templates (a value for a template not rendered this time is
    not a typo); a missing value is an error only for the templates being rendered.
    """
    files = templates(root)
    subdirs = sorted({rel.split(os.sep, 1)[0] for rel in files if os.sep in rel})
    for name in only or []:
        if name not in subdirs:
            raise ConfigError(f"--only {name}: no such template directory in {root} (have {', '.join(subdirs)})")
    used: set[str] = set()
    out = []
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        used.update(placeholders(text))
        if only and rel.split(os.sep, 1)[0] not in only:
            continue
        r = Rendered(rel, render_text(text, params, rel))
        try:
            r.documents()
        except yaml.YAMLError as err:
            raise ConfigError(f"{rel}: rendered text is not valid YAML: {err}") from None
        out.append(r)
    unknown = sorted(set(params) - used)
    if unknown:
        raise ConfigError(f"parameters not used by any template in {root}: {', '.join(unknown)} (typo?)")
    return out


def write_all(rendered: list[Rendered], out_dir: str) -> list[str]:
    written = []
    for r in rendered:
        path = os.path.join(out_dir, r.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(r.text)
        written.append(path)
    return written
