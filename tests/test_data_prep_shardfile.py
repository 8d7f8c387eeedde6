"""Shard tars: exactly what tarfile would write, with nothing that varies between runs."""
from __future__ import annotations

import io
import random
import string
import tarfile

import pytest

from data_prep.shardfile import ShardWriter, _tobuf, member_header


def test_template_headers_equal_tarfiles():
    rng = random.Random(0)
    for _ in range(500):
        name = "".join(rng.choice(string.ascii_letters + string.digits + "_-") for _ in range(rng.randint(1, 120)))
        size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 10**8)])
        assert member_header(name + ".jpg", size) == _tobuf(name + ".jpg", size)


def test_shard_bytes_equal_tarfile_and_headers_are_fixed(tmp_path):
    samples = [("k1", b"x" * 1000, 3, "n01440764"), ("k" * 120, b"y" * 512, 10, "n02102040")]
    with ShardWriter(tmp_path / "a.tar") as w:
        for s in samples:
            w.add(*s)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for key, jpg, cls, wnid in samples:
            for ext, data in (("cls", str(cls).encode()), ("jpg", jpg), ("wnid", wnid.encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o444, 0, 0, "", ""
                t.addfile(ti, io.BytesIO(data))
    data = (tmp_path / "a.tar").read_bytes()
    assert data == buf.getvalue() and w.size == len(data) and w.count == 2
    with tarfile.open(tmp_path / "a.tar") as t:
        ms = t.getmembers()
    assert [m.name for m in ms][:3] == ["k1.cls", "k1.jpg", "k1.wnid"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in ms} == {(0, 0, 0, "", "", 0o444)}


def test_a_failed_shard_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "b.tar") as w:
            w.add("k", b"x", 0, "n0")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
