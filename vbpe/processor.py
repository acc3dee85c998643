"""`VisualProcessor`: text with `<image>` placeholders + images -> one LLM id sequence, and back.

The text tokenizer is the one `vbpe train init` extended: it knows every layout id, `<image>`
among its special tokens. Text is tokenized as the tokenizer would on its own (its BOS, its
special-token handling), then each `<image>` id is replaced by that image's ids (`<boi> ... <eoi>`,
the rows `vbpe tokenize` writes). Plain transformers classes only: no `trust_remote_code`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from schemas.base import InputError
from vbpe.tokenizer import VisualTokenizer

CONFIG = "processor_config.json"
VISUAL_DIR = "visual_tokenizer"
LAYOUT = "layout.yaml"


@dataclass
class DecodedSample:
    """A sequence decoded back: its text (each image span shown as the image token) and its images."""

    text: str
    images: list = field(default_factory=list)


class VisualProcessor:
    def __init__(self, text_tokenizer, visual_tokenizer: VisualTokenizer, image_token: str = "<image>"):
        self.tokenizer = text_tokenizer
        self.visual = visual_tokenizer
        self.image_token = image_token
        lay = visual_tokenizer.layout
        if image_token not in lay.special_tokens:
            raise InputError(f"image token {image_token!r} is not one of the layout's special tokens {lay.special_tokens}")
        self.image_token_id = lay.special_id(image_token)
        self._check_text_tokenizer()

    def _check_text_tokenizer(self) -> None:
        lay, tok = self.visual.layout, self.tokenizer
        if len(tok) != lay.total_size:
            raise InputError(f"the text tokenizer has {len(tok)} ids but the layout {lay.fingerprint()} has "
                             f"{lay.total_size}: extend it with `vbpe train init` and this tokenizer's layout")
        got = tok.convert_tokens_to_ids(list(lay.special_tokens))
        want = [lay.special_id(s) for s in lay.special_tokens]
        if got != want:
            raise InputError(f"the text tokenizer puts {lay.special_tokens} at {got}, the layout at {want}")

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, visual_tokenizer: VisualTokenizer | str | None = None,
                        **visual_kwargs: Any) -> "VisualProcessor":
        """From a directory `vbpe train init` (or `save_pretrained`) wrote.

        The visual tokenizer comes from `visual_tokenizer` (an instance or a directory), else from the
        directory's `visual_tokenizer/`. The directory's `layout.yaml`, when present, must be its layout.
        """
        from transformers import AutoTokenizer

        from pipeline import storage
        from pipeline.storage import local_dir
        from schemas.layout import IdLayout

        path = str(path)
        with local_dir(path) as local:
            text = AutoTokenizer.from_pretrained(local)
            cfg = {}
            if os.path.exists(os.path.join(local, CONFIG)):
                with open(os.path.join(local, CONFIG), encoding="utf-8") as f:
                    cfg = json.load(f)
            if visual_tokenizer is None:
                if not os.path.exists(os.path.join(local, VISUAL_DIR)):
                    raise InputError(f"{path} has no {VISUAL_DIR}/: pass visual_tokenizer= (a directory `vbpe export` "
                                     "wrote, or a VisualTokenizer)")
                visual_tokenizer = VisualTokenizer.from_pretrained(os.path.join(local, VISUAL_DIR), **visual_kwargs)
            elif not isinstance(visual_tokenizer, VisualTokenizer):
                visual_tokenizer = VisualTokenizer.from_pretrained(str(visual_tokenizer), **visual_kwargs)
            layout_path = os.path.join(local, LAYOUT)
            if os.path.exists(layout_path):
                from pipeline.configargs import load_config

                model_layout = load_config(IdLayout, layout_path)
                if model_layout.fingerprint() != visual_tokenizer.layout.fingerprint():
                    raise InputError(f"{storage.join(path, LAYOUT)} is layout {model_layout.fingerprint()} but the "
                                     f"visual tokenizer uses {visual_tokenizer.layout.fingerprint()}: its ids would "
                                     "land on other rows of this model")
        return cls(text, visual_tokenizer, cfg.get("image_token", "<image>"))

    def save_pretrained(self, path: str) -> str:
        """Text tokenizer, visual tokenizer (in `visual_tokenizer/`), layout and this processor's config."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.visual.save_pretrained(os.path.join(path, VISUAL_DIR))
        with open(os.path.join(path, LAYOUT), "w", encoding="utf-8") as f:
            f.write(self.visual.layout.to_yaml())
        with open(os.path.join(path, CONFIG), "w", encoding="utf-8") as f:
            json.dump({"processor_class": "vbpe.VisualProcessor", "image_token": self.image_token}, f, indent=1)
        return path

    # ---- text + images -> ids -------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str] | None = None, images: Any = None, padding: bool | str = False,
                 return_tensors: str | None = None, add_special_tokens: bool = True):
        """`input_ids` and `attention_mask`, one row per text; each `<image>` takes the next image.

        With `add_special_tokens` the text tokenizer adds its special tokens and every row starts with
        its BOS, as training sequences do.
        `images` is one image, a flat list consumed in order over all texts, or one list per text.
        Without text, each image is a sequence of its own. `padding=True` (or "longest") pads with the
        layout's pad id on the tokenizer's padding side; `return_tensors` is "pt", "np" or None.
        """
        from transformers import BatchEncoding

        texts, per_text = self._pair(text, images)
        rows = []
        for t, imgs in zip(texts, per_text):
            ids = self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] if t is not None else []
            bos = self.tokenizer.bos_token_id
            if add_special_tokens and bos is not None and ids[:1] != [bos]:
                ids = [bos] + ids  # training sequences always start with BOS (pipeline/train/prepare.py)
            slots = [i for i, x in enumerate(ids) if x == self.image_token_id]
            if t is not None and len(slots) != len(imgs):
                raise ValueError(f"{len(slots)} {self.image_token} placeholders but {len(imgs)} images for text {t!r}")
            encoded = self.visual.encode_batch(imgs) if imgs else []
            if t is None:
                row = ids + encoded[0]
            else:
                row, last = [], 0
                for slot, image_ids in zip(slots, encoded):
                    row.extend(ids[last:slot])
                    row.extend(image_ids)
                    last = slot + 1
                row.extend(ids[last:])
            rows.append(row)
        data = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        if padding and padding != "do_not_pad":
            data = self._pad(rows)
        elif return_tensors and len({len(r) for r in rows}) > 1:
            raise ValueError("sequences differ in length: pass padding=True to return tensors")
        return BatchEncoding(data, tensor_type=return_tensors)

    def _pair(self, text, images) -> tuple[list[str | None], list[list[Any]]]:
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if text is None:
            if not images:
                raise ValueError("give text=, images=, or both")
            return [None] * len(images), [[im] for im in images]
        texts = [text] if isinstance(text, str) else list(text)
        if images and all(isinstance(x, (list, tuple)) for x in images):
            if len(images) != len(texts):
                raise ValueError(f"{len(images)} image lists for {len(texts)} texts")
            return texts, [list(x) for x in images]
        counts = [t.count(self.image_token) for t in texts]
        if sum(counts) != len(images):
            raise ValueError(f"{sum(counts)} {self.image_token} placeholders in the texts but {len(images)} images")
        out, i = [], 0
        for n in counts:
            out.append(list(images[i:i + n]))
            i += n
        return texts, out

    def _pad(self, rows: list[list[int]]) -> dict[str, list[list[int]]]:
        n = max((len(r) for r in rows), default=0)
        pad = self.visual.layout.pad_id
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        ids, mask = [], []
        for r in rows:
            fill = n - len(r)
            ids.append([pad] * fill + r if left else r + [pad] * fill)
            mask.append([0] * fill + [1] * len(r) if left else [1] * len(r) + [0] * fill)
        return {"input_ids": ids, "attention_mask": mask}

    # ---- ids -> text + images -------------------------------------------------------------------
    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True) -> list[DecodedSample]:
        """Each sequence's text (an image span shown as `<image>`) and its images, decoded to pixels."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def decode(self, sequence: Sequence[int], skip_special_tokens: bool = True) -> DecodedSample:
        lay = self.visual.layout
        ids = [int(x) for x in (sequence.tolist() if hasattr(sequence, "tolist") else sequence)]
        text, spans, i = [], [], 0
        while i < len(ids):
            if ids[i] == lay.begin_image_id:  # an image span becomes one image token in the text
                end = next((j for j in range(i + 1, len(ids)) if ids[j] == lay.end_image_id), len(ids))
                spans.append(np.asarray(ids[i + 1:end], np.int64) - lay.code_offset)
                text.append(self.image_token_id)
                i = end + 1
            else:
                text.append(ids[i])
                i += 1
        if skip_special_tokens:
            drop = set(self.tokenizer.all_special_ids) | {lay.pad_id}
            text = [x for x in text if x == self.image_token_id or x not in drop]
        images = []
        if spans:
            from PIL import Image

            grids = np.stack([self.visual.decode_grid(s) for s in spans])
            images = [Image.fromarray(p) for p in self.visual.decode_codes_batch(grids)]
        return DecodedSample(self.tokenizer.decode(text, skip_special_tokens=False), images)
