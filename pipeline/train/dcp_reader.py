"""Load a sharded safetensors checkpoint (torch.distributed.checkpoint's HuggingFace format) straight
from any storage `pipeline.storage` reaches (local or s3://), without copying it to local disk.

The metadata comes from each file's safetensors header (8-byte length + JSON, where the writer
also recorded every chunk's offset in the full tensor); each rank then reads, by byte range, only
the chunks that overlap its own shards. Nothing is unpickled.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

from pipeline import storage
from schemas.base import StorageOptions

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
SHARDING_KEY = "DCP_SHARDING_INFO"  # where torch's writer keeps each chunk's offsets (its _hf_utils)
OFFSETS_KEY = "saved_offsets"


@dataclass(frozen=True)
class _Chunk:
    path: str
    start: int  # byte offset of the chunk's data in the file
    end: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def _header(fs, path: str) -> tuple[int, dict]:
    with fs.open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


class StoreReader(FileSystemReader):
    """A StorageReader over `pipeline.storage` for checkpoints written by HuggingFaceStorageWriter."""

    def __init__(self, url: str, options: StorageOptions | None = None):
        super().__init__(path=".")  # the local-path machinery of the base class is not used
        self.url = url.rstrip("/")
        self.options = options

    def read_metadata(self, *args, **kwargs) -> Metadata:
        fs, root = storage.get_fs(self.url, self.options)
        tensors: dict[str, TensorStorageMetadata] = {}
        chunks: dict[MetadataIndex, _Chunk] = {}
        for path in sorted(p for p in fs.ls(root, detail=False) if p.endswith(".safetensors")):
            data_start, header = _header(fs, path)
            sharding = json.loads(header.get("__metadata__", {}).get(SHARDING_KEY, "null") or "null")
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                shape = tuple(entry["shape"])
                offset = tuple(sharding[key][OFFSETS_KEY]) if sharding and key in sharding else (0,) * len(shape)
                dtype = DTYPES[entry["dtype"]]
                size = tuple(o + s for o, s in zip(offset, shape))
                meta = tensors.setdefault(key, TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(size), []))
                meta.chunks.append(ChunkStorageMetadata(offsets=torch.Size(offset), sizes=torch.Size(shape)))
                meta.size = torch.Size(max(a, b) for a, b in zip(meta.size, size))
                begin, end = entry["data_offsets"]
                chunks[MetadataIndex(fqn=key, offset=torch.Size(offset))] = _Chunk(path, data_start + begin, data_start + end, shape, dtype)
        metadata = Metadata(state_dict_metadata=tensors, storage_data=chunks)
        metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        fs, _ = storage.get_fs(self.url, self.options)
        cache: dict[MetadataIndex, torch.Tensor] = {}
        for req in plan.items:
            chunk: _Chunk = self.storage_data[req.storage_index]
            if req.storage_index not in cache:
                raw = bytearray(fs.cat_file(chunk.path, start=chunk.start, end=chunk.end)) if chunk.end > chunk.start else bytearray()
                cache[req.storage_index] = (torch.frombuffer(raw, dtype=chunk.dtype) if raw else torch.empty(0, dtype=chunk.dtype)).reshape(chunk.shape)
            piece = cache[req.storage_index][tuple(slice(o, o + n) for o, n in zip(req.storage_offsets, req.lengths))]
            target = planner.resolve_tensor(req).detach()
            if target.size() != piece.size():
                raise ValueError(f"{req.storage_index.fqn}: checkpoint chunk {tuple(piece.size())} != {tuple(target.size())}")
            target.copy_(piece)
            planner.commit_tensor(req, target)
        done: Future = Future()
        done.set_result(None)
        return done

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return True
