"""Tar-level reading: grouping, keys, and every way a shard can be damaged."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from pipeline.ingest.preprocess import ImageSpec
from pipeline.ingest.reader import Decoded, caption_of, iter_shard
from pipeline.rejects import Reject
from pipeline.ingest.tarshards import Sample, ShardUnreadable, TarDamage, iter_samples, split_name
from pipeline.ingest.writer import tar_bytes, write_shard
from schemas.quantize import IngestOptions
from tests.helpers.shards import encode, good_samples, photo


def samples_of(data: bytes, max_member_bytes: int = 1 << 20):
    return list(iter_samples(io.BytesIO(data), max_member_bytes))


def test_split_name_follows_webdataset():
    assert split_name("dir/abc.jpg") == ("dir/abc", "jpg")
    assert split_name("a.b/x.seg.PNG") == ("a.b/x", "seg.png")
    assert split_name("README") == ("README", "")


def test_members_grouped_into_samples_in_order():
    data = tar_bytes([("k1", {"jpg": b"1", "txt": b"c1"}), ("k2", {"png": b"2"}), ("d/k3", {"json": b"{}"})])
    got = samples_of(data)
    assert [s.key for s in got] == ["k1", "k2", "d/k3"]
    assert got[0].members == {"jpg": b"1", "txt": b"c1"}


def test_truncated_mid_member_keeps_earlier_samples_and_reports_damage():
    data = tar_bytes(good_samples("s", 4))
    got = samples_of(data[: len(data) // 2])
    damage = [g for g in got if isinstance(g, TarDamage)]
    ok = [g for g in got if isinstance(g, Sample)]
    assert len(damage) == 1 and "truncated" in damage[0].reason
    assert 1 <= len(ok) < 4
    assert damage[0].key not in {s.key for s in ok}


def test_cut_at_member_boundary_is_detected():
    """tarfile would silently stop here; the missing end-of-archive marker gives it away."""
    data = tar_bytes([("a", {"bin": b"x" * 512}), ("b", {"bin": b"y" * 512})])
    boundary = 512 * 4  # two (header + one data block) members
    got = samples_of(data[:boundary])
    assert [type(g) for g in got] == [Sample, TarDamage]
    assert got[1].key == "b" and "end-of-archive" in got[1].reason


def test_garbage_after_members_is_damage():
    data = tar_bytes([("a", {"bin": b"x" * 10})])
    body = data[:1024] + b"\x07" * 512
    got = samples_of(body)
    assert isinstance(got[-1], TarDamage)


@pytest.mark.parametrize("data", [b"", b"not a tar" * 100])
def test_unreadable_shard_raises(data):
    with pytest.raises(ShardUnreadable):
        samples_of(data)


def test_oversize_member_is_not_read():
    got = samples_of(tar_bytes([("a", {"jpg": b"x" * 5000, "txt": b"t"})]), max_member_bytes=1000)
    assert got[0].oversize == {"jpg": 5000} and got[0].members == {"txt": b"t"}


def test_gzipped_shard_and_truncated_gzip(tmp_path):
    data = gzip.compress(tar_bytes(good_samples("g", 3)))
    assert [s.key for s in samples_of(data)] == ["g0000", "g0001", "g0002"]
    got = samples_of(data[: len(data) * 2 // 3])
    assert isinstance(got[-1], TarDamage)


def _shard(tmp_path, samples, name="x.tar"):
    path = str(tmp_path / name)
    write_shard(path, samples)
    return path


def test_iter_shard_rejects_with_reasons(tmp_path):
    img = encode(photo(1), "PNG")
    path = _shard(tmp_path, [
        ("ok", {"png": img, "txt": b" a caption \n"}),
        ("noimg", {"txt": b"hello"}),
        ("seg_only", {"seg.png": img}),
        ("ok", {"jpg": encode(photo(2), "JPEG")}),
    ])
    got = list(iter_shard(path, ImageSpec(32), IngestOptions()))
    assert isinstance(got[0], Decoded) and got[0].pixels.shape == (32, 32, 3) and got[0].caption == "a caption"
    assert [(r.key, r.reason.split(":")[0]) for r in got[1:]] == [
        ("noimg", "no image member"), ("seg_only", "no image member"), ("ok", "duplicate key in shard")]


def test_iter_shard_member_too_large(tmp_path):
    path = _shard(tmp_path, [("big", {"jpg": encode(photo(1, 400, 400), "JPEG")})])
    (got,) = iter_shard(path, ImageSpec(32), IngestOptions(max_member_bytes=100))
    assert isinstance(got, Reject) and got.reason.startswith("member too large")


@pytest.mark.parametrize(
    "members,expected",
    [
        ({"json": json.dumps({"caption": "c1", "id": 3}).encode()}, "c1"),
        ({"json": json.dumps("c2").encode()}, "c2"),
        ({"json": b"{not json"}, "{not json"),
        ({"txt": "caf\u00e9".encode()}, "caf\u00e9"),
        ({"txt": b"t", "json": b'{"text": "j"}'}, "t"),
        ({}, None),
    ],
)
def test_caption_extraction(members, expected):
    assert caption_of(Sample("k", members), ["txt", "json"]) == expected


def _special_members_tar() -> bytes:
    """Regular samples around a symlink, a hard link, a directory, a fifo and a device: each must be accounted for."""
    buf = io.BytesIO()
    img = encode(photo(3), "PNG")
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        def add(name: str, data: bytes | None = None, **attrs) -> None:
            info = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        add("a.png", img)
        add("link.png", type=tarfile.SYMTYPE, linkname="a.png")
        add("hard.png", type=tarfile.LNKTYPE, linkname="a.png")
        add("photos", type=tarfile.DIRTYPE)
        add("pipe.png", type=tarfile.FIFOTYPE)
        add("dev.png", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("withcap.png", type=tarfile.SYMTYPE, linkname="a.png")
        add("withcap.txt", b"a caption")
        add("z.png", img)
    return buf.getvalue()


def test_members_that_are_not_regular_files_are_rejected_not_lost(tmp_path):
    path = tmp_path / "special.tar"
    path.write_bytes(_special_members_tar())
    got = list(iter_shard(str(path), ImageSpec(32), IngestOptions()))
    assert [g.key for g in got] == ["a", "link", "hard", "photos", "pipe", "dev", "withcap", "z"]
    assert isinstance(got[0], Decoded) and isinstance(got[-1], Decoded)
    reasons = {r.key: r.reason for r in got[1:-1]}
    assert all(isinstance(r, Reject) and r.source == str(path) for r in got[1:-1])
    assert reasons == {
        "link": "not a regular file: link.png is a symlink", "hard": "not a regular file: hard.png is a hard link",
        "photos": "not a regular file: photos is a directory", "pipe": "not a regular file: pipe.png is a fifo",
        "dev": "not a regular file: dev.png is a device", "withcap": "not a regular file: withcap.png is a symlink",
    }
    assert [r.row for r in got[1:-1]] == [1, 2, 3, 4, 5, 6]
