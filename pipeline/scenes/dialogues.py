"""Templated conversations of the four data types; every answer is read off the scene.

  foundation  (FD): a caption of the whole scene, objects in reading order, then the background
  perception  (PD): colour / shape / size / position of one object, presence of an object, the background
  reasoning   (RD): counting (all, by colour, by shape), relative position, size and count comparisons
  instruction (ID): two or three turns about one object or one kind of object

Text is lower-case words separated by spaces, punctuation included as words ("what color is it ?"),
so a word-level tokenizer over `WORDS` covers it exactly. Answers end with " ." and are short, which
makes exact match a meaningful score.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.scenes.scene import (
    BACKGROUNDS, COLOURS, NUMBERS, PLURALS, RELATIONS, SHAPES, SIZES, Scene, Shape, position_name, relation_holds,
)

Turns = list[tuple[str, str]]  # (question, answer) pairs

_POSITIONS = [position_name(r, c) for r in range(3) for c in range(3)]
_TEMPLATE_WORDS = """
describe the image . what is in picture ? give a short caption of and on background , at
color shape size where does look like there object objects small or large how many are more than
which larger yes no is it an find tell me then its other can you see first see count
""".split()
WORDS = sorted(set(
    _TEMPLATE_WORDS + list(SHAPES) + list(PLURALS.values()) + list(COLOURS) + list(SIZES) + list(BACKGROUNDS)
    + list(NUMBERS) + " ".join(RELATIONS).split() + " ".join(_POSITIONS).split() + ["a", "nothing"]
))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _shape_phrase(s: Shape) -> str:
    return f"a {s.size} {s.colour} {s.kind} at the {s.position}"


def caption(scene: Scene) -> str:
    parts = [_shape_phrase(s) for s in scene.shapes]
    body = parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on a {scene.background} background ."


def foundation(scene: Scene, rng: np.random.Generator) -> Turns:
    prompt = _pick(rng, ["describe the image .", "what is in the picture ?", "give a short caption of the image ."])
    return [(prompt, caption(scene))]


def _empty_cell(scene: Scene, rng: np.random.Generator) -> tuple[int, int] | None:
    free = [(r, c) for r in range(3) for c in range(3) if scene.at(r, c) is None]
    return _pick(rng, free) if free else None


def perception(scene: Scene, rng: np.random.Generator) -> Turns:
    s = _pick(rng, scene.shapes)
    ref = scene.reference(s)
    kind = _pick(rng, ["color", "shape", "where", "size", "present", "background", "at"])
    if kind == "color":
        return [(f"what color is the object at the {s.position} ?", f"{s.colour} .")]
    if kind == "shape":
        return [(f"what shape is at the {s.position} ?", f"{s.kind} .")]
    if kind == "where":
        return [(f"where is the {ref} ?", f"{s.position} .")]
    if kind == "size":
        return [(f"is the {ref} small or large ?", f"{s.size} .")]
    if kind == "present":
        colour, shape = _pick(rng, list(COLOURS)), _pick(rng, SHAPES)
        if rng.random() < 0.5:
            colour, shape = s.colour, s.kind
        answer = "yes ." if scene.count(kind=shape, colour=colour) else "no ."
        return [(f"is there a {colour} {shape} in the image ?", answer)]
    if kind == "background":
        return [("what does the background look like ?", f"{scene.background} .")]
    cell = _empty_cell(scene, rng) if rng.random() < 0.3 else None
    if cell is not None:
        return [(f"what is at the {position_name(*cell)} ?", "nothing .")]
    return [(f"what is at the {s.position} ?", f"a {s.size} {s.colour} {s.kind} .")]


def _count_question(scene: Scene, rng: np.random.Generator) -> Turns:
    kind = _pick(rng, ["all", "colour", "shape"])
    if kind == "all":
        return [("how many objects are there ?", f"{NUMBERS[len(scene.shapes)]} .")]
    present = rng.random() < 0.6
    if kind == "colour":
        colour = _pick(rng, [s.colour for s in scene.shapes]) if present else _pick(rng, list(COLOURS))
        return [(f"how many {colour} objects are there ?", f"{NUMBERS[scene.count(colour=colour)]} .")]
    shape = _pick(rng, [s.kind for s in scene.shapes]) if present else _pick(rng, SHAPES)
    return [(f"how many {PLURALS[shape]} are there ?", f"{NUMBERS[scene.count(kind=shape)]} .")]


def reasoning(scene: Scene, rng: np.random.Generator) -> Turns:
    kinds = ["count", "count"]
    if len(scene.shapes) >= 2:
        kinds += ["relation", "relation", "more"]
        if len({s.size for s in scene.shapes}) == 2:
            kinds.append("larger")
    kind = _pick(rng, kinds)
    if kind == "count":
        return _count_question(scene, rng)
    if kind == "more":
        c1, c2 = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
        more = scene.count(colour=c1) > scene.count(colour=c2)
        return [(f"are there more {c1} objects than {c2} objects ?", "yes ." if more else "no .")]
    if kind == "relation":
        i, j = (int(k) for k in rng.choice(len(scene.shapes), size=2, replace=False))
        a, b = scene.shapes[i], scene.shapes[j]
        rel = _pick(rng, RELATIONS)
        answer = "yes ." if relation_holds(a, rel, b) else "no ."
        return [(f"is the {scene.reference(a)} {rel} the {scene.reference(b)} ?", answer)]
    small = _pick(rng, [s for s in scene.shapes if s.size == "small"])
    large = _pick(rng, [s for s in scene.shapes if s.size == "large"])
    first, second = (small, large) if rng.random() < 0.5 else (large, small)
    return [(f"which is larger , the {scene.reference(first)} or the {scene.reference(second)} ?",
             f"the {scene.reference(large)} .")]


def instruction(scene: Scene, rng: np.random.Generator) -> Turns:
    if rng.random() < 0.5:
        s = _pick(rng, scene.shapes)
        turns = [(f"look at the object at the {s.position} . what shape is it ?", f"{s.kind} ."),
                 ("what color is it ?", f"{s.colour} .")]
        if len(scene.shapes) >= 2:
            turns.append(("how many other objects are there ?", f"{NUMBERS[len(scene.shapes) - 1]} ."))
        return turns
    unique = [s for s in scene.shapes if scene.count(kind=s.kind) == 1]
    if unique and rng.random() < 0.7:
        s = _pick(rng, unique)
        return [(f"find the {s.kind} . is there one ?", "yes ."), ("where is it ?", f"{s.position} ."),
                ("and what color is it ?", f"{s.colour} .")]
    absent = [k for k in SHAPES if scene.count(kind=k) == 0]
    if absent:
        return [(f"find the {_pick(rng, absent)} . is there one ?", "no ."),
                ("how many objects can you see then ?", f"{NUMBERS[len(scene.shapes)]} .")]
    return [("how many objects can you see ?", f"{NUMBERS[len(scene.shapes)]} ."),
            ("tell me the shape of the first one .", f"{scene.shapes[0].kind} .")]


TYPES: dict[str, Callable[[Scene, np.random.Generator], Turns]] = {
    "foundation": foundation, "perception": perception, "reasoning": reasoning, "instruction": instruction,
}


def llava_turns(turns: Turns) -> list[dict]:
    """LLaVA-style messages; the image placeholder opens the first question."""
    out = []
    for i, (question, answer) in enumerate(turns):
        out.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        out.append({"from": "gpt", "value": answer})
    return out
