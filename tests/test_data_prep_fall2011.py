"""The Fall 2011 layout (Table 2's starred rows): per-synset tars or folders, a val split
held out by the documented rule, the same shards from every form. Checked against
fall11_whole.tar read with the tarfile module and the rule written out here."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from data_prep.fall2011 import held_out, holdout_count
from data_prep.sources import detect_layouts
from data_prep.tarindex import TarError
from data_prep.verify import verify
from data_prep_helpers import build, cli, fixture, manifest, output_digest, read_split


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source, out, fixture description) of a quirky Fall 2011 fixture made by the CLI."""
    root = tmp_path_factory.mktemp("fall2011")
    r = cli("data_prep.make_fixture", "--out", str(root / "src"), "--layout", "fall2011", "--classes", "3",
            "--train-per-class", "12", "--quirks")
    assert r.returncode == 0, r.stderr
    build(root / "src", root / "out")
    return root / "src", root / "out", json.loads((root / "src" / "fixture.json").read_text())


def synsets(source) -> dict[str, dict[str, bytes]]:
    """{wnid: {member name: bytes}} of fall11_whole.tar, read with the tarfile module."""
    out = {}
    with tarfile.open(source / "fall11_whole.tar") as outer:
        for m in outer.getmembers():
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())) as inner:
                out[m.name.removesuffix(".tar")] = {i.name: inner.extractfile(i).read() for i in inner.getmembers()}
    return out


def rule(keys: list[str]) -> set[str]:
    """docs/data_prep.md's hold-out: the min(50, n // 10) smallest blake2b('holdout:' + key)."""
    h = lambda k: hashlib.blake2b(f"holdout:{k}".encode(), digest_size=16).digest()  # noqa: E731
    return set(sorted(keys, key=h)[:min(50, len(keys) // 10)])


def test_val_is_held_out_per_synset_and_labels_are_sorted_wnid_indices(built):
    source, out, desc = built
    expect = {"train": {}, "val": {}}
    for wnid, files in synsets(source).items():
        keys = [n.removesuffix(".JPEG") for n in files if n.endswith(".JPEG")]
        val = rule(keys)
        assert val and len(val) == len(keys) // 10
        for k in keys:
            if k not in desc["unreadable"]["train"]:
                expect["val" if k in val else "train"][k] = wnid
    m = manifest(out)
    wnids = sorted(desc["classes"])
    assert m["classes"] == wnids and "words" not in m  # the release names no class
    assert m["settings"]["holdout"] == {"per_class": 50, "at_most_one_in": 10}
    for split in ("train", "val"):
        samples = read_split(out, split)
        assert {k: w for k, _, _, w in samples} == expect[split]
        assert all(cls == wnids.index(w) for _, _, cls, w in samples)
    assert m["splits"]["train"]["ignored_files"] == 1  # the text file in a synset's tar
    assert verify(out) == []


def test_the_holdout_rule():
    assert [holdout_count(n) for n in (0, 9, 10, 30, 499, 500, 10_000)] == [0, 0, 1, 3, 49, 50, 50]
    keys = [f"n00004475_{i}" for i in range(1000)]
    assert held_out(keys) == held_out(keys[::-1]) == rule(keys) and len(rule(keys)) == 50


def test_extracted_forms_give_the_same_shards(built, tmp_path):
    """The outer tar extracted (a <wnid>.tar each), then one synset extracted too (a folder)."""
    source, out, _ = built
    with tarfile.open(source / "fall11_whole.tar") as outer:
        outer.extractall(tmp_path / "tars")
    build(tmp_path / "tars", tmp_path / "out-tars")
    first = sorted(p for p in (tmp_path / "tars").iterdir())[0]
    with tarfile.open(first) as inner:
        inner.extractall(first.with_suffix(""))
    first.unlink()
    build(tmp_path / "tars", tmp_path / "out-mixed")
    for other in ("out-tars", "out-mixed"):
        assert output_digest(tmp_path / other) == output_digest(out)
        for split, v in manifest(out)["splits"].items():
            w = manifest(tmp_path / other)["splits"][split]
            assert w["shards"] == v["shards"] and w["plan_sha256"] == v["plan_sha256"]
            assert [k["key"] for k in w["skipped"]] == [k["key"] for k in v["skipped"]]


def test_class_tars_beside_the_ilsvrc_tarballs_are_not_fall2011(tmp_path):
    """ILSVRC2012_img_train.tar extracted beside itself leaves n*.tar files: still official;
    the same n*.tar files alone are the Fall 2011 release's extracted outer level."""
    fixture(tmp_path / "src", "official", quirks=False, classes=2, train_per_class=1, val_per_class=1)
    with tarfile.open(tmp_path / "src" / "ILSVRC2012_img_train.tar") as outer:
        outer.extractall(tmp_path / "src")
        outer.extractall(tmp_path / "alone")
    assert detect_layouts(tmp_path / "src") == ["official"]
    assert detect_layouts(tmp_path / "alone") == ["fall2011"]


def test_a_damaged_synset_tar_is_named(built, tmp_path):
    source = built[0]
    data = bytearray((source / "fall11_whole.tar").read_bytes())
    with tarfile.open(source / "fall11_whole.tar") as outer:
        first = outer.getmembers()[0]
    data[first.offset_data + 148] ^= 0xFF  # the checksum of the inner tar's first header
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "fall11_whole.tar").write_bytes(bytes(data))
    with pytest.raises(TarError, match=rf"fall11_whole.tar: bad tar header checksum at byte 0 of its inner "
                                       rf"tar {first.name} \(which starts at byte {first.offset_data}\)"):
        build(tmp_path / "src", tmp_path / "out")
