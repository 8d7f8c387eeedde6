"""The ILSVRC-2010 layout (Table 1's data): labels from the devkit and the separate test
ground truth in sorted-WNID order, patch_images.tar's replacements in the shards, the
gzipped train JPEGs, and errors that name the file. Checked against the fixture's files
read with tarfile, scipy and PIL."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep.build_shards import build_shards
from data_prep.image import decode_256
from data_prep.records import SourceError
from data_prep.verify import verify
from data_prep_helpers import build, cli, fixture, manifest, read_split

FILES = ("ILSVRC2010_images_train.tar", "ILSVRC2010_images_val.tar", "ILSVRC2010_images_test.tar",
         "ILSVRC2010_devkit-1.0.tar.gz", "ILSVRC2010_test_ground_truth.txt", "patch_images.tar")


@pytest.fixture(scope="module")
def release_2010(tmp_path_factory):
    """(source, out, fixture description, build log) of a 2010 fixture made by the CLI."""
    root = tmp_path_factory.mktemp("ilsvrc2010")
    r = cli("data_prep.make_fixture", "--out", str(root / "src"), "--layout", "ilsvrc2010", "--classes", "4",
            "--train-per-class", "4", "--val-per-class", "2")
    assert r.returncode == 0, r.stderr
    log = []
    build_shards(root / "src", root / "out", shard_size=8, workers=1, log=log.append)
    return root / "src", root / "out", json.loads((root / "src" / "fixture.json").read_text()), log


def members(path) -> dict[str, bytes]:
    """{member name: bytes} of a tar (a path, or bytes in a BytesIO), read with the tarfile module."""
    with (tarfile.open(fileobj=path) if isinstance(path, io.BytesIO) else tarfile.open(path)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def devkit(source):
    """ILSVRC2010_ID -> WNID, WNID -> words, and the val ground truth, read with scipy."""
    dk = members(source / "ILSVRC2010_devkit-1.0.tar.gz")
    synsets = scipy.io.loadmat(io.BytesIO(dk["devkit-1.0/data/meta.mat"]), squeeze_me=True)["synsets"].ravel()
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    id_to_wnid = {int(s["ILSVRC2010_ID"]): str(s["WNID"]) for s in leaves}
    words = {str(s["WNID"]): str(s["words"]) for s in leaves}
    return id_to_wnid, words, dk["devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt"].split()


def test_the_layout_is_detected_and_what_it_found_is_said(release_2010):
    source, out, desc, log = release_2010
    assert "layout: ilsvrc2010, 4 classes" in log[0]
    for name in FILES:
        assert name in log[0]
    patched = {s: len(k) for s, k in desc["patched"].items()}
    assert f"({patched['train']} train, {patched['val']} val, {patched['test']} test replacements)" in log[0]
    m = manifest(out)
    assert m["settings"]["layout"] == "ilsvrc2010" and list(m["splits"]) == ["train", "val", "test"]
    assert verify(out, decode=True) == []


def test_labels_are_sorted_wnid_indices_of_the_devkit_and_test_ground_truth(release_2010):
    source, out, desc, _ = release_2010
    id_to_wnid, words, val_truth = devkit(source)
    wnids = sorted(id_to_wnid.values())
    assert [id_to_wnid[i] for i in sorted(id_to_wnid)] != wnids  # ID order is not sorted-WNID order
    m = manifest(out)
    assert m["classes"] == wnids and m["words"] == [words[w] for w in wnids]
    truth = {"val": val_truth, "test": (source / "ILSVRC2010_test_ground_truth.txt").read_bytes().split()}
    for split in ("val", "test"):
        samples = read_split(out, split)
        keys = {n.removesuffix(".JPEG") for n in members(source / FILES[1 + (split == "test")])}
        assert {k for k, *_ in samples} == keys and len(truth[split]) == len(keys)
        for key, _, cls, wnid in samples:
            assert wnid == id_to_wnid[int(truth[split][int(key.rsplit("_", 1)[1]) - 1])]
            assert cls == wnids.index(wnid)
    inner = {n: members(io.BytesIO(b)) for n, b in members(source / FILES[0]).items()}
    train = {k.removesuffix(".JPEG"): n.removesuffix(".tar") for n, files in inner.items() for k in files}
    samples = read_split(out, "train")
    assert {k: w for k, _, _, w in samples} == train
    assert all(cls == wnids.index(w) for _, _, cls, w in samples)


def test_patch_images_replace_the_originals_in_the_shards(release_2010):
    """The tars hold blank grey images where patch_images.tar has the real ones."""
    source, out, desc, _ = release_2010
    patches = {tuple(n.split("/")[-2:]): b for n, b in members(source / "patch_images.tar").items()}
    assert sorted(patches) == sorted((s, f"{k}.JPEG") for s, keys in desc["patched"].items() for k in keys)
    for split, tar in zip(("train", "val", "test"), FILES):
        shards = {k: img for k, img, *_ in read_split(out, split)}
        originals = members(source / tar)
        if split == "train":
            originals = {n: b for inner in originals.values() for n, b in members(io.BytesIO(inner)).items()}
        for key in desc["patched"][split]:
            got = shards[key].astype(float)
            patch = decode_256(patches[split, f"{key}.JPEG"]).pixels
            blank = decode_256(originals[f"{key}.JPEG"]).pixels
            assert np.abs(got - patch).mean() < 3 < 20 < np.abs(got - blank).mean()


def test_gzipped_train_jpegs_are_unzipped(release_2010):
    source, out, desc, _ = release_2010
    (key,) = [k for k, kind in desc["quirks"]["train"].items() if kind == "gzip"]
    wnid = desc["labels"]["train"][key]
    data = members(io.BytesIO(members(source / FILES[0])[f"{wnid}.tar"]))[f"{key}.JPEG"]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data))  # as stored, not an image
    converted = {c["key"]: c["notes"] for c in manifest(out)["splits"]["train"]["converted"]}
    assert "gzip-compressed" in converted[key]
    got = {k: img for k, img, *_ in read_split(out, "train")}[key].astype(float)
    assert np.abs(got - decode_256(gzip.decompress(data)).pixels).mean() < 3


def _linked(source, tmp_path, drop=()):
    """A source of links to the fixture's files, less `drop`."""
    src = tmp_path / "linked"
    src.mkdir()
    for name in FILES:
        if name not in drop:
            os.symlink(source / name, src / name)
    return src


@pytest.mark.parametrize("gone", ["ILSVRC2010_test_ground_truth.txt", "patch_images.tar",
                                  "ILSVRC2010_devkit-1.0.tar.gz"])
def test_a_missing_file_is_named(release_2010, tmp_path, gone):
    src = _linked(release_2010[0], tmp_path, drop=[gone])
    with pytest.raises(SourceError, match=f"looks like the ilsvrc2010 layout but lacks {gone}"):
        build(src, tmp_path / "out")


def test_without_the_test_split_its_ground_truth_is_not_needed(release_2010, tmp_path):
    src = _linked(release_2010[0], tmp_path, drop=["ILSVRC2010_test_ground_truth.txt", "ILSVRC2010_images_test.tar"])
    m = build(src, tmp_path / "out", splits=["train", "val"], limit=2)
    assert list(m["splits"]) == ["train", "val"]


@pytest.mark.parametrize("name, data, message", [
    ("ILSVRC2010_devkit-1.0.tar.gz", b"not a tarball", "ILSVRC2010_devkit-1.0.tar.gz: not a readable ILSVRC2010 "
                                                      "devkit"),
    ("ILSVRC2010_test_ground_truth.txt", b"1\n9999\n", "ILSVRC2010_test_ground_truth.txt: ILSVRC2010_IDs not in "
                                                       r"meta.mat: \[9999\]"),
    ("patch_images.tar", "extra", r"patch_images.tar: 1 val images replace nothing in ILSVRC2010_images_val.tar "
                                  r"\(first: patch_images/val/ILSVRC2010_val_09999999.JPEG\)"),
    ("ILSVRC2010_images_val.tar", "cut", r"ILSVRC2010_images_val.tar: truncated"),
])
def test_a_bad_file_is_named(release_2010, tmp_path, name, data, message):
    src = _linked(release_2010[0], tmp_path, drop=[name])
    original = (release_2010[0] / name).read_bytes()
    if data == "extra":  # one more replacement, for an image the val tar does not have
        with tarfile.open(fileobj=io.BytesIO(original)) as t:
            data = _append(t, "patch_images/val/ILSVRC2010_val_09999999.JPEG", b"\xff\xd8")
    elif data == "cut":
        data = original[:len(original) // 2]
    (src / name).write_bytes(data)
    with pytest.raises((SourceError, ValueError), match=message):
        build(src, tmp_path / "out")


def _append(tar: tarfile.TarFile, name: str, data: bytes) -> bytes:
    """The tar's members plus one more, as a new tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m in tar.getmembers():
            out.addfile(m, tar.extractfile(m))
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_2012_layout_has_no_test_split(tmp_path):
    fixture(tmp_path / "src", "official", quirks=False, classes=2, train_per_class=1, val_per_class=1)
    with pytest.raises(SourceError, match="the official layout has no test split"):
        build(tmp_path / "src", tmp_path / "out", splits=["train", "test"])
