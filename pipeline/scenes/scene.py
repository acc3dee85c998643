"""What a scene holds: up to nine objects, one per cell of a 3 x 3 grid, on a textured background."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle", "cross", "diamond")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses", "diamond": "diamonds"}
COLOURS = {
    "red": (215, 45, 45),
    "green": (40, 165, 70),
    "blue": (55, 95, 230),
    "yellow": (235, 205, 40),
    "purple": (150, 65, 195),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "striped", "checked", "noisy")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
# Radius of a shape as a share of the cell side.
RADIUS = {"small": 0.24, "large": 0.40}


def position_name(row: int, col: int) -> str:
    """'top left', 'top', ..., 'center', ..., 'bottom right'."""
    rows, cols = ("top", None, "bottom"), ("left", None, "right")
    words = [w for w in (rows[row], cols[col]) if w]
    return " ".join(words) or "center"


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    row: int
    col: int
    cx: int  # centre in pixels
    cy: int
    radius: int

    @property
    def position(self) -> str:
        return position_name(self.row, self.col)


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: str
    noise_seed: int
    shapes: tuple[Shape, ...]  # in reading order (row, then column)

    def count(self, kind: str | None = None, colour: str | None = None) -> int:
        return sum(1 for s in self.shapes if (kind is None or s.kind == kind) and (colour is None or s.colour == colour))

    def at(self, row: int, col: int) -> Shape | None:
        return next((s for s in self.shapes if (s.row, s.col) == (row, col)), None)

    def reference(self, shape: Shape) -> str:
        """The shortest unique name: 'circle' when it is the only circle, else 'red circle' (unique by sampling)."""
        return shape.kind if self.count(kind=shape.kind) == 1 else f"{shape.colour} {shape.kind}"

    def to_json(self) -> dict:
        return {"image_size": self.image_size, "background": self.background, "noise_seed": self.noise_seed,
                "shapes": [asdict(s) for s in self.shapes]}

    @staticmethod
    def from_json(d: dict) -> "Scene":
        return Scene(d["image_size"], d["background"], d["noise_seed"], tuple(Shape(**s) for s in d["shapes"]))


def relation_holds(a: Shape, relation: str, b: Shape) -> bool:
    """Relations compare grid cells: 'left of' means a column further left, whatever the rows."""
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def sample_scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int) -> Scene:
    """Distinct cells; no two shapes share (colour, kind), so 'the red circle' always names one object."""
    cell = image_size // 3
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    colours = list(COLOURS)
    taken: set[tuple[str, str]] = set()
    shapes = []
    for c in cells:
        row, col = divmod(c, 3)
        while True:
            kind, colour = SHAPES[int(rng.integers(len(SHAPES)))], colours[int(rng.integers(len(colours)))]
            if (colour, kind) not in taken:
                break
        taken.add((colour, kind))
        size = SIZES[int(rng.integers(len(SIZES)))]
        radius = max(2, round(RADIUS[size] * cell))
        slack = max(0, cell // 2 - radius - 1)
        cx = col * cell + cell // 2 + int(rng.integers(-slack, slack + 1))
        cy = row * cell + cell // 2 + int(rng.integers(-slack, slack + 1))
        shapes.append(Shape(kind, colour, size, row, col, cx, cy, radius))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(image_size, background, int(rng.integers(2**31)), tuple(shapes))
