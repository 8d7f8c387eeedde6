"""data_prep.verify on real built shards with bad bytes inside: every problem is reported
(shard + sample + what is wrong), never raised; and build skip reasons are deterministic."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

import pytest
from PIL import Image

from data_prep.verify import verify
from data_prep_helpers import build, cli, fixture, manifest


@pytest.fixture(scope="module")
def quirky_build(tmp_path_factory):
    """A quirky folder-layout build whose train tree also holds a text file named .JPEG."""
    root = tmp_path_factory.mktemp("verify")
    fixture(root / "src", "folder")
    next((root / "src" / "train").iterdir()).joinpath("notes.JPEG").write_text("not an image")
    build(root / "src", root / "out")
    return root / "out"


def _copy(built, tmp_path):
    shutil.copytree(built, tmp_path / "out")
    return tmp_path / "out"


def _replace(out, shard: str, index: int, ext: str, data: bytes) -> str:
    """Rewrite `shard` with sample `index`'s `ext` member replaced by `data`, and fix its sha256
    in the manifest so that only the bad member itself is wrong. Returns the sample's key."""
    path = out / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    key = members[3 * index][0].name.partition(".")[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m, old in members:
            new = data if m.name == f"{key}.{ext}" else old
            m.size = len(new)
            tar.addfile(m, io.BytesIO(new))
    path.write_bytes(buf.getvalue())
    _rehash(out, shard)
    return key


def _rehash(out, shard: str) -> None:
    m = manifest(out)
    for s in m["splits"].values():
        for e in s["shards"]:
            if e["name"] == shard:
                e["sha256"] = hashlib.sha256((out / shard).read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))


def _jpeg(mode: str, size: int) -> bytes:
    b = io.BytesIO()
    Image.new(mode, (size, size), 128).save(b, "JPEG")
    return b.getvalue()


def test_bad_cls_and_wnid_are_reported_and_checking_goes_on(quirky_build, tmp_path):
    out = _copy(quirky_build, tmp_path)
    k1 = _replace(out, "train-000000.tar", 1, "cls", b"seven")
    k2 = _replace(out, "train-000001.tar", 2, "wnid", b"n0\xff\xfe")
    (out / "val-000000.tar").write_bytes(b"\0" * 10240)  # a later shard is still checked
    problems = verify(out)
    assert any(p.startswith(f"train-000000.tar: sample {k1} cls is not an integer: b'seven'") for p in problems)
    assert any(p.startswith(f"train-000001.tar: sample {k2} wnid is not UTF-8") for p in problems)
    assert any(p.startswith("val-000000.tar: sha256") for p in problems)
    r = cli("data_prep.verify", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"PROBLEM train-000000.tar: sample {k1} cls" in r.stdout
    assert f"PROBLEM train-000001.tar: sample {k2} wnid" in r.stdout


def test_decode_reports_images_that_do_not_fully_decode_or_are_the_wrong_shape(quirky_build, tmp_path):
    out = _copy(quirky_build, tmp_path)
    good = _jpeg("RGB", 256)
    bad = {
        _replace(out, "train-000000.tar", 0, "jpg", b"not a jpeg"): "does not decode (UnidentifiedImageError",
        # a valid header and a correct shard hash: only a full decode finds it
        _replace(out, "train-000000.tar", 2, "jpg", good[: len(good) // 2]): "does not decode (OSError",
        _replace(out, "train-000001.tar", 0, "jpg", _jpeg("L", 256)): "is JPEG L 256x256, expected JPEG RGB",
        _replace(out, "val-000000.tar", 1, "jpg", _jpeg("RGB", 200)): "is JPEG RGB 200x200, expected",
    }
    assert verify(out) == []  # the hashes are right; nothing but --decode looks at the pixels
    problems = verify(out, decode=True)
    for key, what in bad.items():
        assert sum(f"sample {key} jpg {what}" in p for p in problems) == 1, (key, problems)
    assert len(problems) == len(bad) and not any(" at 0x" in p for p in problems)
    r = cli("data_prep.verify", "--decode", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.count("PROBLEM") == len(bad)


def test_decode_checks_the_size_the_manifest_gives(quirky_build, tmp_path):
    out = _copy(quirky_build, tmp_path)
    m = manifest(out)
    m["settings"]["image"]["size"] = 128
    (out / "manifest.json").write_text(json.dumps(m))
    problems = verify(out, decode=True)
    assert problems and all("expected JPEG RGB 128x128" in p for p in problems)


def test_non_file_member_is_reported(quirky_build, tmp_path):
    out = _copy(quirky_build, tmp_path)
    with tarfile.open(out / "train-000000.tar", "a") as tar:
        d = tarfile.TarInfo("zz_extra.cls")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    _rehash(out, "train-000000.tar")
    assert "train-000000.tar: member zz_extra.cls is not a regular file" in verify(out)


def test_skip_reason_is_deterministic_and_says_what_was_wrong(quirky_build):
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in manifest(quirky_build)["splits"]["train"]["skipped"]}
    assert reasons["notes.JPEG"] == "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"
    assert not any(" at 0x" in r for r in reasons.values()), reasons
