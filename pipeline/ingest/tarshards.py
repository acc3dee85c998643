"""Samples of a WebDataset tar shard, read as a stream (local file or S3 object).

Damage inside a tar (truncation, garbage after some members) is reported as a `TarDamage` item
so the samples read before it still count; only a shard that cannot be opened at all raises
`ShardUnreadable`. Python's tarfile treats a tar cut at a member boundary as a normal end, so
the end-of-archive marker is checked explicitly.
"""
from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_END_MARKER = "end-of-archive marker"
# Errors that mean "the tar bytes are bad" (as opposed to I/O errors, which fail the shard and are retried).
_TAR_DAMAGE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class ShardUnreadable(Exception):
    """The shard cannot be read as a tar at all (not a tar, empty, unreadable header)."""


@dataclass
class Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    oversize: dict[str, int] = field(default_factory=dict)
    repeated: list[str] = field(default_factory=list)
    not_regular: dict[str, str] = field(default_factory=dict)  # field -> "symlink", "directory", ...


def member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.isdir():
        return "directory"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "special file"


@dataclass
class TarDamage:
    key: str | None
    reason: str


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key runs to the first dot of the file name, the rest is the field."""
    m = _KEY_EXT.match(name)
    if not m:
        return name, ""
    return m.group(1), m.group(2).lower()


def _recording_tarinfo(ends: list[str]) -> type[tarfile.TarInfo]:
    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tf)
            except tarfile.EOFHeaderError:
                ends.append(_END_MARKER)
                raise
            except tarfile.HeaderError as err:
                ends.append(str(err) or type(err).__name__)
                raise

    return RecordingTarInfo


def iter_samples(fileobj: BinaryIO, max_member_bytes: int) -> Iterator[Sample | TarDamage]:
    """Yield samples in tar order (members of a sample must be contiguous), then at most one TarDamage."""
    ends: list[str] = []
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_recording_tarinfo(ends))
    except _TAR_DAMAGE as err:
        raise ShardUnreadable(f"not a readable tar: {err}") from None
    current: Sample | None = None
    try:
        for member in tf:
            key, ext = split_name(member.name)
            if current is not None and key != current.key:
                yield current
                current = None
                tf.members.clear()
            if current is None:
                current = Sample(key)
            if ext in current.members or ext in current.oversize or ext in current.not_regular:
                current.repeated.append(ext)
                continue
            if not member.isfile():  # no data to read: the sample is rejected (never silently lost)
                current.not_regular[ext] = member_kind(member)
                continue
            if member.size > max_member_bytes:
                current.oversize[ext] = member.size
                continue
            handle = tf.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise tarfile.ReadError("unexpected end of data")
            current.members[ext] = data
    except _TAR_DAMAGE as err:
        yield TarDamage(current.key if current else None, f"truncated or corrupt tar: {err}")
        return
    if ends and ends[-1] != _END_MARKER:
        yield TarDamage(current.key if current else None, f"truncated or corrupt tar: no {_END_MARKER} ({ends[-1]})")
        return
    if current is not None:
        yield current
