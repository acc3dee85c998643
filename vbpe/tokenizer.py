"""`VisualTokenizer`: image -> LLM ids -> image, with the vocabulary, quantizer and id layout of one directory.

Three levels, each usable alone:
  pixels  <-> codes   the quantizer (`quantize`, `decode_codes`)
  codes   <-> tokens  visual BPE (`encode_grid`, `decode_grid`; lossless with the token layout)
  tokens  <-> LLM ids the id layout (`<boi>` + code_offset + tokens + `<eoi>`)
`encode(image)` is exactly the row `vbpe tokenize` writes for the same image; `decode(ids)` goes
back to pixels through the quantizer's decoder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.tokenize.layout import wrap_images
from schemas.base import InputError, StorageOptions
from vbpe import directory
from vbpe.images import BadImage, prepare

log = logging.getLogger(__name__)


@dataclass
class VisualEncoding:
    """One image's tokens and where their codes lie (what makes `decode_grid` exact).

    `cells` lists, token by token in anchor order, the cells (r * width + c) of the token's codes in
    the order of its expansion; it is a permutation of the grid's cells.
    """

    input_ids: list[int]
    tokens: np.ndarray  # vbpe ids (codes < V, merges V + k), anchor order
    anchors: np.ndarray  # cell of each token's anchor (its smallest cell)
    cells: np.ndarray
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.tokens)


def _storage(storage: StorageOptions | dict | None, endpoint_url: str | None) -> StorageOptions | None:
    if isinstance(storage, dict):
        storage = StorageOptions.model_validate(storage)
    if endpoint_url:
        storage = (storage or StorageOptions()).model_copy(update={"endpoint_url": endpoint_url})
    return storage


class VisualTokenizer:
    """Load with `from_pretrained(dir)` (a directory `vbpe export` or `save_pretrained` wrote)."""

    def __init__(self, parts: directory.Parts, device: str = "cpu", precision: str = "auto"):
        """`device` and `precision` ("auto", "fp32", "bf16") as in the quantize stage's config: "auto" is
        bf16 only on a GPU that supports it (VQ-GANs), so codes equal those of a stage run the same way."""
        from pipeline.bpe.encoder import BpeEncoder
        from pipeline.bpe.geometry import Shapes, Tree

        self._parts = parts
        self.vocab = parts.vocab
        self.layout = parts.layout
        self.quantizer = parts.spec
        self.device = device
        self.precision = precision
        self._bpe = BpeEncoder(parts.vocab)
        self._tree = Tree.of(parts.vocab)
        self._shapes = Shapes(parts.vocab)
        self._encoder = None
        self._decoder = None

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "cpu", precision: str = "auto",
                        storage: StorageOptions | dict | None = None, endpoint_url: str | None = None
                        ) -> "VisualTokenizer":
        """Load and check a tokenizer directory (local or s3://)."""
        return cls(directory.load(str(path), _storage(storage, endpoint_url)), device, precision)

    @classmethod
    def from_files(cls, vocab: str, quantizer: Any, layout: Any = None, *, device: str = "cpu",
                   precision: str = "auto", storage: StorageOptions | dict | None = None) -> "VisualTokenizer":
        """From a vocabulary file, a quantizer config (mapping, pydantic config or YAML path) and a layout."""
        from vbpe.export import quantizer_config

        parts = directory.from_sources(vocab, quantizer_config(quantizer), layout, _storage(storage, None))
        return cls(parts, device, precision)

    def save_pretrained(self, path: str, *, storage: StorageOptions | dict | None = None,
                        endpoint_url: str | None = None) -> str:
        directory.save(self._parts, str(path), _storage(storage, endpoint_url))
        return str(path)

    # ---- what it is -----------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.vocab.codebook_size

    @property
    def num_merges(self) -> int:
        return len(self.vocab.merges)

    @property
    def image_size(self) -> int:
        return self.quantizer.image.size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.quantizer.grid)

    @property
    def begin_image_id(self) -> int:
        return self.layout.begin_image_id

    @property
    def end_image_id(self) -> int:
        return self.layout.end_image_id

    @property
    def has_decoder(self) -> bool:
        return self._parts.decoder is not None

    @property
    def fingerprints(self) -> dict[str, str | None]:
        return {"vocab": self.vocab.fingerprint(), "quantizer": self.quantizer.fingerprint,
                "decoder": self._parts.decoder.fingerprint if self._parts.decoder else None,
                "layout": self.layout.fingerprint()}

    def __repr__(self) -> str:
        h, w = self.grid_shape
        return (f"VisualTokenizer({self.quantizer.kind} {self.image_size}px -> {h}x{w} codes of {self.codebook_size}, "
                f"{self.num_merges} merges, LLM ids {self.layout.code_offset}..{self.layout.total_size - 1})")

    # ---- pixels <-> codes -----------------------------------------------------------------------
    def _quantizer(self):
        if self._encoder is None:
            from pipeline.quantize.registry import build_encoder

            self._encoder = build_encoder(self.quantizer, self._parts.tensors, self.device, self.precision)
        return self._encoder

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """(B, S, S, 3) uint8 quantizer inputs, decoded and cropped as the quantize stage does."""
        out = np.empty((len(images), self.image_size, self.image_size, 3), np.uint8)
        for i, image in enumerate(images):
            try:
                out[i] = prepare(image, self.quantizer.image)
            except BadImage as err:
                where = f"image {i}: " if len(images) > 1 else ""
                raise BadImage(f"{where}{err}") from None
        return out

    def quantize(self, image: Any) -> np.ndarray:
        """One image -> its (h, w) code grid."""
        return self.quantize_batch([image])[0]

    def quantize_batch(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        h, w = self.grid_shape
        out = np.empty((len(images), h, w), np.int32)
        for lo in range(0, len(images), batch_size):
            chunk = self.preprocess(images[lo:lo + batch_size])
            out[lo:lo + len(chunk)] = self._quantizer().encode(chunk)
        return out

    def decode_codes(self, codes: np.ndarray) -> "Image.Image":  # noqa: F821
        """An (h, w) code grid -> the quantizer's picture of it (k-means: centroid patches)."""
        from PIL import Image

        return Image.fromarray(self.decode_codes_batch(np.asarray(codes)[None])[0])

    def decode_codes_batch(self, codes: np.ndarray) -> np.ndarray:
        """(B, h, w) codes -> (B, H, W, 3) uint8."""
        if self._decoder is None:
            if not self.has_decoder:
                raise InputError(f"this tokenizer has no decoder ({self.quantizer.kind} quantizer exported without "
                                 "decoder weights): codes cannot be turned back into pixels")
            from pipeline.quantize.decode import build_decoder

            self._decoder = build_decoder(self._parts.decoder, self._parts.decoder_tensors, self.device)
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise ValueError(f"expected (B, h, w) codes, got shape {codes.shape}")
        self._check_codes(codes)
        return self._decoder.decode(codes.astype(np.int64))

    def _check_codes(self, codes: np.ndarray) -> None:
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes outside [0, {self.codebook_size})")

    # ---- codes <-> tokens -----------------------------------------------------------------------
    def encode_grid(self, codes: np.ndarray) -> VisualEncoding:
        """One (h, w) code grid -> its tokens, their anchors and where their codes lie."""
        return self.encode_grids([codes], return_encoding=True)[0]

    def encode_grids(self, grids: Iterable[np.ndarray] | np.ndarray, return_encoding: bool = False,
                     return_tensors: str | None = None) -> list:
        """Many code grids at once (the fast path): LLM ids per grid as lists, as int32 arrays with
        `return_tensors="np"` (no Python ints: the fastest), or `VisualEncoding`s."""
        from pipeline.bpe.geometry import leaf_cells

        if isinstance(grids, np.ndarray) and grids.ndim == 3:  # (B, h, w): no per-grid copies
            n, h, w = grids.shape
            heights, widths = np.full(n, h, np.int32), np.full(n, w, np.int32)
            codes = np.ascontiguousarray(grids, np.int32).reshape(-1)
        else:
            grids = [np.asarray(g) for g in grids]
            for g in grids:
                if g.ndim != 2:
                    raise ValueError(f"expected (h, w) code grids, got shape {g.shape}")
            heights = np.array([g.shape[0] for g in grids], np.int32)
            widths = np.array([g.shape[1] for g in grids], np.int32)
            codes = (np.concatenate([g.reshape(-1) for g in grids]) if grids else np.empty(0)).astype(np.int32, copy=False)
            n = len(grids)
        if n == 0:
            return []
        self._check_codes(codes)
        if not return_encoding:
            enc = self._bpe.encode(codes, heights, widths)
            return self._split_ids(enc.tokens, enc.offsets, return_tensors)
        enc, owner, nxt, gstart = self._bpe.encode_with_cells(codes, heights, widths)
        t = self._tree
        cells = leaf_cells(owner, nxt, enc.tokens, enc.offsets, gstart, t.left, t.right, t.size, t.V)
        ids = self._split_ids(enc.tokens, enc.offsets, None)
        out = []
        for i in range(n):
            lo, hi = enc.offsets[i], enc.offsets[i + 1]
            out.append(VisualEncoding(ids[i], enc.tokens[lo:hi].copy(), enc.anchors[lo:hi].copy(),
                                      cells[gstart[i]:gstart[i + 1]].copy(), int(heights[i]), int(widths[i])))
        return out

    def _split_ids(self, tokens: np.ndarray, offsets: np.ndarray, return_tensors: str | None = None) -> list:
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use None (lists) or 'np'")
        values, new_offsets = wrap_images(tokens, offsets, self.layout)
        arrays = np.split(values, new_offsets[1:-1])
        return arrays if return_tensors == "np" else [a.tolist() for a in arrays]

    def decode_grid(self, tokens: VisualEncoding | Sequence[int], shape: tuple[int, int] | None = None) -> np.ndarray:
        """Tokens -> the (h, w) code grid.

        Exact from a `VisualEncoding` (it records where every code lies). From vbpe ids alone the layout
        is inferred: 2D BPE ids do not always determine the grid (see docs/api.md), so the result is a
        grid the ids plausibly came from, not always the original.
        """
        from pipeline.bpe.geometry import expand, place_ids

        t = self._tree
        if isinstance(tokens, VisualEncoding):
            codes = np.empty(tokens.height * tokens.width, np.int32)
            codes[tokens.cells] = expand(np.asarray(tokens.tokens, np.int64), t.size, t.leaf_start, t.leaves)
            return codes.reshape(tokens.height, tokens.width)
        ids = np.asarray(tokens, np.int64).reshape(-1)
        bad = (ids < 0) | (ids >= self.vocab.size)
        if bad.any():
            raise ValueError(f"token {int(ids[bad][0])} is not a vbpe id of this tokenizer (0..{self.vocab.size - 1})")
        h, w = shape or self.grid_shape
        codes, missed = place_ids(ids, h, w, t, self._shapes)
        if missed:
            log.debug("decode_grid: %d of %d tokens did not fit whole on the %dx%d grid", missed, len(ids), h, w)
        return codes

    def image_tokens(self, ids: Sequence[int]) -> np.ndarray:
        """LLM ids -> the vbpe ids of their first image: the span after the first `<boi>` up to `<eoi>`, or
        all the ids when there is no `<boi>` (then each must be a visual id)."""
        a = np.asarray(ids, np.int64).reshape(-1)
        lay = self.layout
        start = np.flatnonzero(a == lay.begin_image_id)
        if start.size:
            a = a[start[0] + 1:]
            end = np.flatnonzero(a == lay.end_image_id)
            a = a[: end[0]] if end.size else a
        t = a - lay.code_offset
        bad = (t < 0) | (t >= self.vocab.size)
        if bad.any():
            raise ValueError(f"id {int(a[bad][0])} is not a visual id of this tokenizer "
                             f"({lay.code_offset}..{lay.code_offset + self.vocab.size - 1})")
        return t

    # ---- images <-> LLM ids ---------------------------------------------------------------------
    def encode(self, image: Any, return_encoding: bool = False) -> list[int] | VisualEncoding:
        """One image (PIL image, uint8 array, bytes or path) -> LLM ids `<boi> ... <eoi>`."""
        return self.encode_batch([image], return_encoding=return_encoding)[0]

    def encode_batch(self, images: Sequence[Any], return_encoding: bool = False, batch_size: int = 32,
                     return_tensors: str | None = None) -> list:
        """Images -> LLM ids per image (quantized `batch_size` at a time, then one BPE call)."""
        codes = self.quantize_batch(list(images), batch_size)
        return self.encode_grids(codes, return_encoding=return_encoding, return_tensors=return_tensors)

    def decode(self, ids: VisualEncoding | Sequence[int]) -> "Image.Image":  # noqa: F821
        """LLM ids (their first image span) or a `VisualEncoding` -> a PIL image through the quantizer's decoder."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, sequences: Sequence[VisualEncoding | Sequence[int]]) -> list:
        from PIL import Image

        if not len(sequences):
            return []
        grids = np.stack([self.decode_grid(s if isinstance(s, VisualEncoding) else self.image_tokens(s))
                          for s in sequences])
        return [Image.fromarray(p) for p in self.decode_codes_batch(grids)]
