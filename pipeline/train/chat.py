"""Turns -> token ids and an answer mask, with the tokenizer's own chat template.

The template is rendered on growing prefixes of the conversation; the text each turn adds is
tokenized on its own, so we know exactly which ids are the assistant's answer (trained) and which
are prompt or role headers (not trained). A template whose renderings are not prefixes of one
another cannot be split this way and is refused.
"""
from __future__ import annotations

from typing import Any

from pipeline.train.records import Turn

# Used only when the tokenizer has no template (base models); `vbpe train init` stores it in the tokenizer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class TemplateError(ValueError):
    """The conversation cannot be rendered by this template (counted as a reject)."""


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # jinja raises its own errors (e.g. "roles must alternate")
        raise TemplateError(f"chat template: {err}") from None


def segments(tokenizer: Any, turns: list[Turn]) -> list[tuple[str, bool]]:
    """(text, is_answer) pieces whose concatenation is the rendered conversation, template BOS removed."""
    messages = [{"role": t.role, "content": t.content} for t in turns]
    out: list[tuple[str, bool]] = []
    done = ""
    bos = tokenizer.bos_token or ""

    def add(text: str, answer: bool) -> None:
        nonlocal done
        if not text.startswith(done):
            raise TemplateError("chat template is not prefix-stable (a later turn rewrites earlier text)")
        piece = text[len(done) :]
        if not out and bos and piece.startswith(bos):
            piece = piece[len(bos) :]
        if piece:
            out.append((piece, answer))
        done = text

    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i > 0:
            add(_render(tokenizer, messages[:i], True), False)
        add(_render(tokenizer, messages[: i + 1], False), m["role"] == "assistant")
    return out


def encode(tokenizer: Any, turns: list[Turn], placeholder: str | None = None) -> tuple[list[int], list[bool], list[int]]:
    """Token ids of the conversation, per id whether it belongs to an answer, and where images go.

    With `placeholder`, prompt text is cut at each occurrence (the pieces tokenized on their own) and
    the third list holds, in order, the id position at which each image is to be inserted.
    """
    ids: list[int] = []
    mask: list[bool] = []
    slots: list[int] = []
    for text, answer in segments(tokenizer, turns):
        parts = [text] if answer or not placeholder else text.split(placeholder)
        for j, part in enumerate(parts):
            if j:
                slots.append(len(ids))
            if part:
                piece = tokenizer(part, add_special_tokens=False)["input_ids"]
                ids.extend(piece)
                mask.extend([answer] * len(piece))
    return ids, mask, slots
