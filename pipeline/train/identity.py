"""What a prepared dataset is keyed by: the content of every input file, not its name, size or time.

Local files are hashed (BLAKE2b over their bytes). Objects on S3 are identified by size and ETag,
which the store derives from the bytes (an MD5 of the object or of its upload parts), so nothing is
downloaded; a store that gives no ETag has the object hashed like a local file.
"""
from __future__ import annotations

import hashlib

from pipeline import storage
from schemas.base import StorageOptions

CHUNK = 1 << 20


def content_id(path: str, options: StorageOptions | None = None) -> str:
    fs, p = storage.get_fs(path, options)
    if storage.is_remote(path):
        info = fs.info(p)
        etag = info.get("ETag") or info.get("etag")
        if etag:
            return f"etag:{info.get('size')}:{str(etag).strip(chr(34))}"
    h = hashlib.blake2b(digest_size=16)
    with fs.open(p, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"blake2b:{h.hexdigest()}"
