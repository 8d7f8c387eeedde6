"""Shard tars: exactly what tarfile would write, with nothing that varies between runs;
read back by read_samples exactly as webdataset's own tar reader reads them."""
from __future__ import annotations

import io
import random
import string
import tarfile

import pytest
from webdataset.tariterators import tarfile_samples

from data_prep.shardfile import ShardWriter, _tobuf, member_header, read_samples
from data_prep.tarindex import TarError


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


def random_samples(n, seed=0):
    rng = random.Random(seed)
    keys = [f"dir{i % 3}/" * (i % 2) + "k" * rng.choice([1, 5, 99, 150]) + str(i) for i in range(n)]
    return [(k, rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000])), rng.randrange(1000),
             "n%08d" % i) for i, k in enumerate(keys)]


def as_tuples(samples):
    return [(s["__key__"], s["cls"], s["jpg"], s["wnid"]) for s in samples]


def webdataset_reads(path):
    return as_tuples(tarfile_samples([{"url": str(path)}]))


def test_read_samples_equals_webdatasets_reader_on_our_shards(tmp_path):
    with ShardWriter(tmp_path / "s.tar") as w:
        for sample in random_samples(40):
            w.add(*sample)
    reference = webdataset_reads(tmp_path / "s.tar")
    assert len(reference) == 40 and any(len(k) > 100 for k, *_ in reference)  # GNU long names
    assert as_tuples(read_samples(tmp_path / "s.tar")) == reference
    for start, stop in [(0, 1), (7, 19), (39, 40), (40, 40), (0, 40)]:
        assert as_tuples(read_samples(tmp_path / "s.tar", start, stop)) == reference[start:stop]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_read_samples_reads_tars_written_by_tarfile(tmp_path, fmt):
    """Shards from other tools: ustar (long names split into prefix + name), pax, GNU."""
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as t:
        for i, (key, jpg, cls, wnid) in enumerate(random_samples(12, seed=1)):
            if fmt == tarfile.USTAR_FORMAT:   # > 100 characters only through the prefix field
                key = f"part{i}/" * 12 + key.rsplit("/", 1)[-1][-80:]
            for ext, data in (("cls", str(cls).encode()), ("jpg", jpg), ("wnid", wnid.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    reference = webdataset_reads(path)
    assert len(reference) == 12 and max(len(k) for k, *_ in reference) > 100
    assert as_tuples(read_samples(path)) == reference


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_read_samples_with_directories_links_and_odd_names(tmp_path, fmt):
    """A long or non-ASCII directory name belongs to the directory only; extensions are
    lower-cased; webdataset's key/extension split ("x/.hidden" is key "x/"), links and
    names without an extension skipped: as webdataset reads them."""
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in [("d" * 120 + "/", None), ("dé/", None), ("x/a.cls", b"1"),
                           ("x/a.JPG", b"jpeg"), ("x/.hidden", b"?"), ("x/link", "x/a.cls"),
                           ("x/README", b"-"), ("x/b.cls", b"2"), ("x/b.jpg", b"jpeg2")]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
            else:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    ours = [{k: v for k, v in s.items() if k != "__url__"} for s in read_samples(path)]
    theirs = [{k: v for k, v in s.items() if k != "__url__"}
              for s in tarfile_samples([{"url": str(path)}])]
    assert ours == theirs == [{"__key__": "x/a", "cls": b"1", "jpg": b"jpeg"},
                              {"__key__": "x/", "hidden": b"?"},
                              {"__key__": "x/b", "cls": b"2", "jpg": b"jpeg2"}]


def test_bad_shards_are_errors_that_name_the_file(tmp_path):
    path = tmp_path / "s.tar"
    with ShardWriter(path) as w:
        for sample in random_samples(5):
            w.add(*sample)
    whole = path.read_bytes()
    with pytest.raises(TarError, match=r"s\.tar: holds 5 samples, 6 expected"):
        list(read_samples(path, 0, 6))
    with tarfile.open(path) as t:
        last = t.getmembers()[-1]
    members_end = last.offset_data + -(-last.size // 512) * 512
    for cut in (2000, len(whole) // 2, members_end):
        path.write_bytes(whole[:cut])          # inside a member, or whole members but no end
        for start in (0, 4):                            # read, or skipped with a seek
            with pytest.raises(TarError, match=r"s\.tar: truncated"):
                list(read_samples(path, start))
    path.write_bytes(whole[:100] + b"X" + whole[101:])            # a damaged header
    with pytest.raises(TarError, match=r"s\.tar: bad tar header checksum at byte 0"):
        list(read_samples(path))


def test_two_members_with_one_extension_are_an_error(tmp_path):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as t:
        for name in ("k.jpg", "k.JPG"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(TarError, match=r"t\.tar: sample k has two jpg members"):
        list(read_samples(path))
