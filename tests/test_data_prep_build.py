"""build_shards on make_fixture's three layouts: counts, labels, quirks, determinism, refusals."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import scipy.io

from data_prep.build_shards import BuildError
from data_prep.manifest import class_names
from data_prep.sources import SourceError
from data_prep.verify import verify
from data_prep_helpers import build, cli, fixture, manifest, output_digest, read_split

LAYOUTS = ("official", "folder", "kaggle")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Each layout of the same quirky fixture, built with 2 workers: {layout: (source, out, desc)}."""
    root = tmp_path_factory.mktemp("layouts")
    res = {}
    for layout in LAYOUTS:
        desc = fixture(root / f"src-{layout}", layout)
        build(root / f"src-{layout}", root / f"out-{layout}", workers=2)
        res[layout] = (root / f"src-{layout}", root / f"out-{layout}", desc)
    return res


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_counts_labels_and_images(layouts, layout):
    source, out, desc = layouts[layout]
    m = manifest(out)
    assert m["settings"]["layout"] == layout
    assert m["settings"]["data"] == "generated" and (source / "GENERATED").is_file()
    assert m["classes"] == sorted(desc["classes"])
    for split in ("train", "val"):
        samples = read_split(out, split)
        expect = {k: w for k, w in desc["labels"][split].items() if k not in desc["unreadable"][split]}
        assert len(samples) == m["splits"][split]["count"] == desc["expected_count"][split]
        assert {k: w for k, _, _, w in samples} == expect
        for key, img, cls, wnid in samples:
            assert img.shape == (256, 256, 3) and img.dtype == np.uint8
            assert m["classes"][cls] == wnid
        # the odd-but-readable files are converted, not dropped; the unreadable ones are listed
        assert set(desc["quirks"][split]) - set(desc["unreadable"][split]) <= {k for k, *_ in samples}
        skipped = {s["key"]: s for s in m["splits"][split]["skipped"]}
        assert set(skipped) == set(desc["unreadable"][split])
        assert all(s["reason"] and s["path"] for s in skipped.values())
    converted = {c["key"]: c["notes"] for c in m["splits"]["train"]["converted"]}
    by_kind = {kind: key for key, kind in desc["quirks"]["train"].items()}
    assert "format PNG" in converted[by_kind["png"]]
    assert "mode CMYK" in converted[by_kind["cmyk"]]
    assert "mode L" in converted[by_kind["grey"]]
    assert "mode P" in converted[by_kind["palette"]]
    assert verify(out, decode=True) == []


def test_training_shards_mix_classes(layouts):
    _, out, _ = layouts["official"]
    first = [wnid for *_, wnid in read_split(out, "train")][:8]
    assert len(set(first)) >= 3


def read_devkit(source):
    """meta.mat's synsets and the validation ground truth, read with tarfile and scipy."""
    with tarfile.open(source / "ILSVRC2012_devkit_t12.tar.gz") as tar:
        names = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers()}
        meta = scipy.io.loadmat(io.BytesIO(tar.extractfile(names["meta.mat"]).read()), squeeze_me=True)["synsets"]
        truth = tar.extractfile(names["ILSVRC2012_validation_ground_truth.txt"]).read().split()
    return meta, truth


def test_val_labels_follow_the_devkit_ids(layouts):
    """Read the devkit with scipy directly: ground-truth ILSVRC2012_ID -> WNID -> sorted index."""
    source, out, _ = layouts["official"]
    meta, truth = read_devkit(source)
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in meta.ravel() if int(s["num_children"]) == 0}
    assert len(meta.ravel()) > len(id_to_wnid)  # inner synsets are there, and ignored
    wnids = sorted(id_to_wnid.values())
    assert [id_to_wnid[i] for i in sorted(id_to_wnid)] != wnids  # ID order is not sorted-WNID order
    samples = read_split(out, "val")
    assert samples
    for key, _, cls, wnid in samples:
        n = int(key.rsplit("_", 1)[1])
        assert wnid == id_to_wnid[int(truth[n - 1])]
        assert cls == wnids.index(wnid)


def test_manifest_words_where_the_source_names_its_classes(layouts):
    """meta.mat's words (official), LOC_synset_mapping.txt's (kaggle), parallel to classes; a
    folder tree names none, and class_names falls back to the WNIDs."""
    meta, _ = read_devkit(layouts["official"][0])
    words = {str(s["WNID"]): str(s["words"]) for s in meta.ravel() if int(s["num_children"]) == 0}
    mapping = dict(line.split(" ", 1) for line in
                   (layouts["kaggle"][0] / "LOC_synset_mapping.txt").read_text().splitlines())
    official, kaggle, folder = (manifest(layouts[layout][1]) for layout in ("official", "kaggle", "folder"))
    assert official["words"] == [words[w] for w in official["classes"]] == class_names(official)
    assert kaggle["words"] == [mapping[w] for w in kaggle["classes"]]
    assert "words" not in folder and class_names(folder) == folder["classes"]


def test_three_layouts_give_identical_shards_and_stats(layouts):
    digests = [output_digest(layouts[layout][1]) for layout in LAYOUTS]
    assert digests[0] == digests[1] == digests[2]
    ms = [manifest(layouts[layout][1]) for layout in LAYOUTS]
    for split in ("train", "val"):
        assert ms[0]["splits"][split]["shards"] == ms[1]["splits"][split]["shards"] == ms[2]["splits"][split]["shards"]


def test_the_manifest_names_the_classes_for_people(layouts):
    """The devkit's words (official), the Kaggle synset mapping's; by class index."""
    from data_prep.make_fixture import REAL_WNIDS

    for layout in ("official", "kaggle"):
        m = manifest(layouts[layout][1])
        assert m["words"] == [REAL_WNIDS.get(w, f"synthetic class {w}") for w in m["classes"]]
        assert m["words"][m["classes"].index("n01440764")] == "tench, Tinca tinca"


def test_worker_count_does_not_change_the_output(layouts, tmp_path):
    source, out2, _ = layouts["folder"]
    build(source, tmp_path / "w1", workers=1)
    assert output_digest(tmp_path / "w1") == output_digest(out2)
    assert manifest(tmp_path / "w1") == manifest(out2)


def test_rerun_of_a_complete_build_is_a_noop(layouts):
    source, out, _ = layouts["kaggle"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = cli("data_prep.build_shards", "--source", str(source), "--out", str(out), "--shard-size", "8")
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_damaged_finished_build_is_rebuilt_by_the_rerun(layouts, tmp_path):
    """stats.npz truncated and a shard deleted after the build: the same command rebuilds
    them byte for byte. Sizes are always checked; a shard changed in place at the same size
    only by --verify, which re-hashes every shard."""
    source, out, _ = layouts["official"]
    work = tmp_path / "out"
    shutil.copytree(out, work)
    rerun = ["data_prep.build_shards", "--source", str(source), "--out", str(work),
             "--shard-size", "8", "--workers", "1"]
    os.truncate(work / "stats.npz", 1000)
    (work / "val-000000.tar").unlink()
    r = cli(*rerun)
    assert r.returncode == 0, r.stderr
    assert "stats.npz: sha256 differs from manifest.json's; val-000000.tar: missing" in r.stdout
    assert "nothing to do" not in r.stdout and "repaired" in r.stdout
    assert output_digest(work) == output_digest(out) and manifest(work) == manifest(out)
    data = bytearray((work / "train-000001.tar").read_bytes())
    data[3000] ^= 0xFF
    (work / "train-000001.tar").write_bytes(bytes(data))
    assert "sizes, and stats.npz's sha256 checked): nothing to do" in cli(*rerun).stdout
    r = cli(*rerun, "--verify")
    assert r.returncode == 0 and "train-000001.tar: sha256 differs" in r.stdout, r.stdout + r.stderr
    assert output_digest(work) == output_digest(out) and verify(work) == []
    assert not (work / ".build").exists()


def test_refuses_to_mix_settings(layouts, tmp_path):
    source, out, _ = layouts["kaggle"]
    with pytest.raises(BuildError, match="quality"):
        build(source, out, quality=90)
    # an unfinished build with other settings is refused too
    work = tmp_path / "partial"
    shutil.copytree(out, work)
    (work / "manifest.json").unlink()
    (work / ".build").mkdir()
    (work / ".build" / "settings.json").write_text(json.dumps({"quality": 80}))
    with pytest.raises(BuildError, match="unfinished build with other settings"):
        build(source, work)
    # and so are shards from no known build
    (work / ".build" / "settings.json").unlink()
    with pytest.raises(BuildError, match="no build this tool knows"):
        build(source, work)


def test_limit_takes_a_prefix_of_the_fixed_order(layouts, tmp_path):
    source, full, _ = layouts["folder"]
    build(source, tmp_path / "lim", limit=5, shard_size=3)
    m = manifest(tmp_path / "lim")
    assert m["settings"]["limit"] == 5
    full_train = [k for k, *_ in read_split(full, "train")]
    lim_train = [k for k, *_ in read_split(tmp_path / "lim", "train")]
    assert set(lim_train) <= set(full_train) and 3 <= len(lim_train) <= 5  # up to 2 of 5 may be unreadable
    assert [k for k, *_ in read_split(tmp_path / "lim", "val")] == [k for k, *_ in read_split(full, "val")][:5]
    assert m["stats"]["count"] == len(lim_train)


def test_bad_source_names_the_path_and_the_layouts(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "photo.jpg").write_bytes(b"x")
    for src in (tmp_path / "stuff", tmp_path / "missing"):
        r = cli("data_prep.build_shards", "--source", str(src), "--out", str(tmp_path / "out"))
        assert r.returncode == 2
        assert str(src) in r.stderr
        for name in ("official", "folder", "kaggle", "ILSVRC2012_img_train.tar", "LOC_val_solution.csv"):
            assert name in r.stderr
    assert not (tmp_path / "out").exists()


def test_incomplete_official_layout_says_what_is_missing(tmp_path):
    fixture(tmp_path / "src", "official", quirks=False, classes=2, train_per_class=1, val_per_class=1)
    (tmp_path / "src" / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(SourceError, match="lacks ILSVRC2012_devkit_t12.tar.gz"):
        build(tmp_path / "src", tmp_path / "out")


def test_count_disagreeing_with_the_devkit_is_reported(layouts, tmp_path):
    """A folder tree with the devkit beside it (torchvision's root), one training image missing."""
    official, _, desc = layouts["official"]
    src = tmp_path / "src"
    fixture(src, "folder")
    shutil.copy(official / "ILSVRC2012_devkit_t12.tar.gz", src)
    victim = next(k for k, kind in desc["quirks"]["train"].items() if kind == "large")
    wnid = desc["labels"]["train"][victim]
    (src / "train" / wnid / f"{victim}.JPEG").unlink()
    r = cli("data_prep.build_shards", "--source", str(src), "--out", str(tmp_path / "out"), "--shard-size", "8",
            "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stdout and "-1" in r.stdout
    t = manifest(tmp_path / "out")["splits"]["train"]
    assert t["expected_count"] == t["source_count"] + 1
    assert t["class_count_mismatch"][wnid]["found"] == t["class_count_mismatch"][wnid]["expected"] - 1


def test_cli_summary_lists_skipped_files(tmp_path):
    fixture(tmp_path / "src", "folder", classes=3, train_per_class=2, val_per_class=1)
    next((tmp_path / "src" / "train").iterdir()).joinpath("notes.txt").write_text("not an image")
    r = cli("data_prep.build_shards", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
            "--shard-size", "4", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "layout: folder" in r.stdout
    assert "2 skipped" in r.stdout and "truncated" in r.stdout and "0 bytes" in r.stdout
    assert "images/s" in r.stdout
    assert "ignored 1 files" in r.stdout and manifest(tmp_path / "out")["splits"]["train"]["ignored_files"] == 1
    v = cli("data_prep.verify", str(tmp_path / "out"))
    assert v.returncode == 0 and "OK" in v.stdout


def test_verify_finds_corruption_missing_and_stray_shards(layouts, tmp_path):
    _, out, _ = layouts["official"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "train-000001.tar").read_bytes())
    data[3000] ^= 0xFF
    (bad / "train-000001.tar").write_bytes(bytes(data))
    (bad / "val-000001.tar").unlink()
    shutil.copy(bad / "val-000000.tar", bad / "val-000042.tar")
    m = manifest(bad)
    (bad / "manifest.json").write_text(json.dumps({**m, "words": m["words"][1:]}))
    problems = verify(bad)
    assert f"words: {len(m['classes']) - 1} names for {len(m['classes'])} classes" in problems
    assert any("train-000001.tar: sha256" in p for p in problems)
    assert any("val-000001.tar: missing" in p for p in problems)
    assert any("val-000042.tar: not in the manifest" in p for p in problems)
    r = cli("data_prep.verify", str(bad))
    assert r.returncode == 1 and "PROBLEM" in r.stdout


def test_make_fixture_cli_writes_each_layout(tmp_path):
    for layout, marker in (("official", "ILSVRC2012_img_train.tar"), ("folder", "train"),
                           ("kaggle", "LOC_val_solution.csv")):
        r = cli("data_prep.make_fixture", "--out", str(tmp_path / layout), "--layout", layout, "--classes", "3",
                "--train-per-class", "2", "--val-per-class", "1", "--seed", "3")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / layout / marker).exists()
        desc = json.loads((tmp_path / layout / "fixture.json").read_text())
        assert desc["layout"] == layout and desc["expected_count"] == {"train": 6, "val": 3}
    folder = sorted(p.name for p in (tmp_path / "folder").rglob("*.JPEG"))
    kaggle = sorted(p.name for p in (tmp_path / "kaggle").rglob("*.JPEG"))
    assert folder == kaggle and len(folder) == 9


def test_a_source_without_the_generators_marker_is_recorded_as_real(tmp_path):
    """The manifest says whether the images were real or a generated stand-in (every run
    prints and records it): real unless make_fixture's marker is in the source."""
    fixture(tmp_path / "src", "folder", quirks=False)
    (tmp_path / "src" / "GENERATED").unlink()
    build(tmp_path / "src", tmp_path / "out")
    assert manifest(tmp_path / "out")["settings"]["data"] == "real"
