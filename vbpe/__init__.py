"""vbpe: visual BPE tokenizers you can import.

    import vbpe
    tok = vbpe.VisualTokenizer.from_pretrained("demo-out/tokenizer")
    ids = tok.encode(image)          # LLM ids: <boi> ... <eoi>, as `vbpe tokenize` writes them
    tok.decode(ids).save("x.png")    # back to pixels through the quantizer's decoder

`VisualProcessor` pairs it with the text tokenizer of a model that `vbpe train init` extended.
Names load on first use, so `vbpe` commands that need none of this stay fast to start.
"""
from __future__ import annotations

__all__ = ["VisualEncoding", "VisualProcessor", "VisualTokenizer"]


def __getattr__(name: str):
    if name in ("VisualTokenizer", "VisualEncoding"):
        from vbpe import tokenizer

        return getattr(tokenizer, name)
    if name == "VisualProcessor":
        from vbpe.processor import VisualProcessor

        return VisualProcessor
    raise AttributeError(f"module 'vbpe' has no attribute {name!r}")
