"""The tokenizer directory: everything `VisualTokenizer` needs, in one place, checked on every load.

```
DIR/
  vbpe_tokenizer.json     format, version, and the fingerprint of every part (written last)
  vocab.json              the vocabulary, as `vbpe learn` wrote it
  quantizer.json          quantizer spec (kind, architecture, input size, grid) and decoder spec
  quantizer.safetensors   encoder weights (k-means: the centroids)
  decoder.safetensors     decoder weights (absent when the quantizer's files hold none)
  layout.yaml             the id layout: where visual ids sit among the LLM's ids
```

No pickle anywhere. On load every fingerprint is recomputed from the contents (vocabulary merges,
quantizer and decoder weights with their architecture, layout fields) and compared with the
manifest and with each other (the vocabulary must have been learned on this quantizer's codes, the
layout must fit the vocabulary): an edited or mixed-up directory is refused with one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.bpe.vocab import Vocabulary
from pipeline.quantize.decode import DecoderSpec, decoder_fingerprint
from pipeline.quantize.spec import QuantizerSpec
from pipeline.tokenize.layout import check_layout
from schemas.base import ConfigError, InputError, StorageOptions
from schemas.layout import IdLayout

FORMAT = "vbpe-tokenizer"
VERSION = 1
MANIFEST = "vbpe_tokenizer.json"
VOCAB = "vocab.json"
QUANTIZER = "quantizer.json"
WEIGHTS = "quantizer.safetensors"
DECODER = "decoder.safetensors"
LAYOUT = "layout.yaml"


@dataclass
class Parts:
    """A tokenizer's parts in memory (what the directory holds)."""

    vocab: Vocabulary
    layout: IdLayout
    spec: QuantizerSpec
    tensors: dict[str, np.ndarray]
    decoder: DecoderSpec | None = None
    decoder_tensors: dict[str, np.ndarray] | None = None

    def check(self, source: str) -> None:
        """Everything that must agree, agrees."""
        v, spec = self.vocab, self.spec
        if v.codebook_size != spec.codebook_size:
            raise InputError(f"{source}: the vocabulary has V = {v.codebook_size} but the quantizer has "
                             f"{spec.codebook_size} codes")
        if v.quantizer_fingerprint and v.quantizer_fingerprint != spec.fingerprint:
            raise InputError(f"{source}: the vocabulary was learned on codes of quantizer {v.quantizer_fingerprint}, "
                             f"not of this quantizer ({spec.fingerprint})")
        try:
            check_layout(self.layout, v, "the vocabulary")
        except ConfigError as err:
            raise InputError(f"{source}: {err}") from None

    def manifest(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            software = {"vbpe": version("vbpe")}
        except PackageNotFoundError:
            software = {}
        return {
            "format": FORMAT, "version": VERSION,
            "vocab": {"file": VOCAB, "fingerprint": self.vocab.fingerprint(), "codebook_size": self.vocab.codebook_size,
                      "merges": len(self.vocab.merges)},
            "quantizer": {"file": QUANTIZER, "weights": WEIGHTS, "kind": self.spec.kind,
                          "fingerprint": self.spec.fingerprint},
            "decoder": None if self.decoder is None else {"weights": DECODER, "kind": self.decoder.kind,
                                                          "fingerprint": self.decoder.fingerprint},
            "layout": {"file": LAYOUT, "fingerprint": self.layout.fingerprint(), "total_size": self.layout.total_size},
            "software": software,
        }


def _tensor_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())})


def _tensors(data: bytes, source: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise InputError(f"{source}: not a readable safetensors file ({type(err).__name__}: {err})") from None


def save(parts: Parts, out: str, options: StorageOptions | None = None) -> None:
    """Write every part, then the manifest: a directory whose manifest is there is complete."""
    parts.check(out)
    storage.makedirs(out, options)
    manifest = storage.join(out, MANIFEST)
    if storage.exists(manifest, options):  # an older tokenizer here: it stops being loadable while we rewrite it
        fs, p = storage.get_fs(manifest, options)
        fs.rm(p)
    storage.write_text(storage.join(out, VOCAB), json.dumps(parts.vocab.to_json(), indent=1) + "\n", options)
    storage.write_text(storage.join(out, LAYOUT), parts.layout.to_yaml(), options)
    spec = {"encoder": parts.spec.to_json(), "decoder": None if parts.decoder is None else parts.decoder.to_json()}
    storage.write_text(storage.join(out, QUANTIZER), json.dumps(spec, indent=1) + "\n", options)
    storage.write_bytes(storage.join(out, WEIGHTS), _tensor_bytes(parts.tensors), options)
    decoder = storage.join(out, DECODER)
    if parts.decoder is not None:
        storage.write_bytes(decoder, _tensor_bytes(parts.decoder_tensors or {}), options)
    elif storage.exists(decoder, options):
        fs, p = storage.get_fs(decoder, options)
        fs.rm(p)
    storage.write_text(manifest, json.dumps(parts.manifest(), indent=1) + "\n", options)


def _json(path: str, options: StorageOptions | None) -> Any:
    try:
        return json.loads(storage.read_text(path, options))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None


def _same(what: str, stored: Any, actual: Any, source: str) -> None:
    if stored != actual:
        raise InputError(f"{source}: {what} fingerprint is {actual} but the manifest says {stored}: "
                         "the directory was edited or mixed with another tokenizer's files")


def load(path: str, options: StorageOptions | None = None) -> Parts:
    manifest_path = storage.join(path, MANIFEST)
    if not storage.exists(manifest_path, options):
        raise InputError(f"{path} is not a vbpe tokenizer directory (no {MANIFEST}; write one with `vbpe export`)")
    m = _json(manifest_path, options)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise InputError(f"{manifest_path} is not a {FORMAT} manifest")
    if m.get("version") != VERSION:
        raise InputError(f"{path}: {FORMAT} version {m.get('version')}, this build reads version {VERSION}")
    try:
        vocab = Vocabulary.from_json(_json(storage.join(path, VOCAB), options), source=storage.join(path, VOCAB))
        _same("vocabulary", m["vocab"]["fingerprint"], vocab.fingerprint(), path)
        specs = _json(storage.join(path, QUANTIZER), options)
        spec = QuantizerSpec.from_json(specs["encoder"])
        tensors = _tensors(storage.read_bytes(storage.join(path, WEIGHTS), options), storage.join(path, WEIGHTS))
        _same("quantizer", m["quantizer"]["fingerprint"], spec.recompute_fingerprint(tensors), path)
        _same("quantizer spec", spec.fingerprint, m["quantizer"]["fingerprint"], path)
        decoder = decoder_tensors = None
        if m.get("decoder"):
            decoder = DecoderSpec.from_json(specs["decoder"])
            decoder_tensors = _tensors(storage.read_bytes(storage.join(path, DECODER), options), storage.join(path, DECODER))
            _same("decoder", m["decoder"]["fingerprint"],
                  decoder_fingerprint(decoder.kind, decoder.arch, spec.image, decoder_tensors), path)
            _same("decoder spec", decoder.fingerprint, m["decoder"]["fingerprint"], path)
        layout = IdLayout.from_yaml_text(storage.read_text(storage.join(path, LAYOUT), options), storage.join(path, LAYOUT))
        _same("layout", m["layout"]["fingerprint"], layout.fingerprint(), path)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, (InputError, ConfigError)):
            raise
        raise InputError(f"{path}: damaged tokenizer files ({type(err).__name__}: {err})") from None
    except FileNotFoundError as err:
        raise InputError(f"{path}: incomplete tokenizer directory ({err})") from None
    parts = Parts(vocab, layout, spec, tensors, decoder, decoder_tensors)
    parts.check(path)
    return parts


def default_layout(vocab: Vocabulary) -> IdLayout:
    """Being-VL's layout (Llama-3's 128,256 text ids, 5 specials) sized to this vocabulary."""
    return IdLayout(codebook_size=vocab.codebook_size, num_merges=len(vocab.merges))


def from_sources(vocab_path: str, quantizer, layout: IdLayout | str | None = None,
                 options: StorageOptions | None = None) -> Parts:
    """The parts named by a vocabulary file, a quantizer config and a layout (what `vbpe export` reads)."""
    from pipeline.quantize.decode import prepare_decoder
    from pipeline.quantize.registry import prepare
    from pipeline.tokenize.layout import resolve_layout

    vocab = Vocabulary.load(vocab_path, options)
    spec, tensors = prepare(quantizer, options)
    if not vocab.quantizer_fingerprint:
        import logging

        logging.getLogger(__name__).warning(
            "%s records no quantizer fingerprint: cannot check that it was learned on %s's codes", vocab_path, spec.kind)
    found = prepare_decoder(quantizer, spec, tensors)
    decoder, decoder_tensors = found if found is not None else (None, None)
    layout = resolve_layout(layout, options) or default_layout(vocab)
    parts = Parts(vocab, layout, spec, tensors, decoder, decoder_tensors)
    parts.check(f"{vocab_path} + {spec.kind} quantizer")
    return parts
