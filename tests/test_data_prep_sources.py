"""ImageNet as users really have it: val sorted or flat, CSV quirks, stray and packed class
folders, empty splits, unreadable files, odd names. Each either builds the right labels or
fails with an error that names the file."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from data_prep import build_shards as bs
from data_prep.build_shards import BuildError
from data_prep.sources import KAGGLE_DATA, KAGGLE_VAL, Record, SourceError
from data_prep_helpers import build, fixture, manifest, read_split

TINY = dict(classes=3, train_per_class=2, val_per_class=2)


def val_labels(out) -> dict[str, str]:
    return {k: w for k, _, _, w in read_split(out, "val")}


def expected_val(desc) -> dict[str, str]:
    return {k: w for k, w in desc["labels"]["val"].items() if k not in desc["unreadable"]["val"]}


def test_kaggle_val_sorted_into_class_folders(tmp_path):
    """valprep.sh's layout: val/<wnid>/*.JPEG, the CSV beside it."""
    desc = fixture(tmp_path / "src", "kaggle", **TINY)
    val = tmp_path / "src" / KAGGLE_DATA / "val"
    for p in sorted(val.iterdir()):
        wnid = desc["labels"]["val"].get(p.stem)
        if wnid:
            (val / wnid).mkdir(exist_ok=True)
            p.rename(val / wnid / p.name)
    build(tmp_path / "src", tmp_path / "out")
    assert val_labels(tmp_path / "out") == expected_val(desc)


def test_kaggle_csv_with_bom_suffixed_ids_and_other_header_case(tmp_path):
    desc = fixture(tmp_path / "src", "kaggle", **TINY)
    csv_path = tmp_path / "src" / KAGGLE_VAL
    header, *rows = csv_path.read_text().splitlines()
    rows = [f"{r.split(',', 1)[0]}.JPEG,{r.split(',', 1)[1]}" for r in rows]
    csv_path.write_text("\ufeffimageId,predictionString\r\n" + "\r\n".join(rows) + "\r\n\r\n", encoding="utf-8")
    build(tmp_path / "src", tmp_path / "out")
    assert val_labels(tmp_path / "out") == expected_val(desc)


@pytest.mark.parametrize("bad, message", [
    ("{id},\n", r":3: no WNID at the start of the PredictionString"),
    ("{id},n99999999 1 2 3 4\n", r":3: .* is labelled n\d{8} above and n99999999 here"),
])
def test_kaggle_csv_errors_name_the_line(tmp_path, bad, message):
    fixture(tmp_path / "src", "kaggle", quirks=False, **TINY)
    csv_path = tmp_path / "src" / KAGGLE_VAL
    lines = csv_path.read_text().splitlines(keepends=True)
    lines.insert(2, bad.format(id=lines[1].split(",")[0]))
    csv_path.write_text("".join(lines))
    with pytest.raises(SourceError, match=f"{KAGGLE_VAL}{message}"):
        build(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_folder_layout_flat_val_is_labelled_by_the_devkit(tmp_path):
    official = fixture(tmp_path / "official", "official", **TINY)
    desc = fixture(tmp_path / "src", "folder", **TINY)
    assert desc["labels"] == official["labels"]
    val = tmp_path / "src" / "val"
    for d in [d for d in val.iterdir() if d.is_dir()]:
        for p in d.iterdir():
            p.rename(val / p.name)
        d.rmdir()
    with pytest.raises(BuildError, match=r"val: no images to build .*could not be labelled .*no "
                                         r"ILSVRC2012_devkit_t12.tar.gz to label it"):
        build(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    shutil.copy(tmp_path / "official" / "ILSVRC2012_devkit_t12.tar.gz", tmp_path / "src")
    build(tmp_path / "src", tmp_path / "out")  # the same --out: the failed build held nothing
    assert val_labels(tmp_path / "out") == expected_val(desc)


def test_stray_folders_are_not_classes(tmp_path):
    desc = fixture(tmp_path / "src", "folder", **TINY)
    for name in ("lost+found", "checkpoints"):
        (tmp_path / "src" / "train" / name).mkdir()
        (tmp_path / "src" / "train" / name / "x.JPEG").write_bytes(b"not a class")
    build(tmp_path / "src", tmp_path / "out")
    assert manifest(tmp_path / "out")["classes"] == sorted(desc["classes"])


def test_a_class_left_packed_is_an_error_naming_it(tmp_path):
    desc = fixture(tmp_path / "src", "folder", **TINY)
    wnid = desc["classes"][1]
    shutil.make_archive(str(tmp_path / "src" / "train" / wnid), "tar", tmp_path / "src" / "train" / wnid)
    shutil.rmtree(tmp_path / "src" / "train" / wnid)
    with pytest.raises(SourceError, match=f"train/{wnid}.tar: a class archive not extracted"):
        build(tmp_path / "src", tmp_path / "out")


def test_a_missing_class_shows_in_the_devkit_count_check(tmp_path):
    fixture(tmp_path / "official", "official", **TINY)
    desc = fixture(tmp_path / "src", "folder", **TINY)
    shutil.copy(tmp_path / "official" / "ILSVRC2012_devkit_t12.tar.gz", tmp_path / "src")
    gone = desc["classes"][0]
    shutil.rmtree(tmp_path / "src" / "train" / gone)
    build(tmp_path / "src", tmp_path / "out")
    train = manifest(tmp_path / "out")["splits"]["train"]
    assert train["class_count_mismatch"][gone]["found"] == 0
    lost = sum(w == gone for w in desc["labels"]["train"].values())
    assert train["expected_count"] == train["source_count"] + lost
    assert gone in {w for _, _, _, w in read_split(tmp_path / "out", "val")}  # its val images stay


def test_an_empty_split_fails_and_a_corrected_command_takes_the_out_dir(tmp_path):
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    for d in (tmp_path / "src" / "train").iterdir():
        for p in d.iterdir():
            p.rename(p.with_suffix(".txt"))
    with pytest.raises(BuildError, match=r"train: no images to build .*\d+ files are not images"):
        build(tmp_path / "src", tmp_path / "out", shard_size=4)
    assert not (tmp_path / "out" / "manifest.json").exists()
    good = tmp_path / "good"
    fixture(good, "folder", quirks=False, **TINY)
    m = build(good, tmp_path / "out")  # other settings (source, shard size): nothing was built
    assert m["splits"]["train"]["count"] == len(desc["labels"]["train"])


def test_an_unreadable_file_is_listed_not_fatal(tmp_path):
    """build_shard on a record whose file cannot be opened (permissions are no obstacle to
    root, so the file is gone instead): listed as skipped, the shard still written."""
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    (tmp_path / "out" / bs.WORK / "parts").mkdir(parents=True)
    keys = sorted(desc["labels"]["train"])[:2]
    records = [Record("val", k, desc["labels"]["train"][k], str(tmp_path / "src" / "train" /
                                                               desc["labels"]["train"][k] / f"{k}.JPEG"),
                      -1, -1, f"train/{k}.JPEG") for k in keys]
    records[0] = records[0]._replace(path=str(tmp_path / "gone.JPEG"))
    bs._init_worker({"out": str(tmp_path / "out"), "quality": 90,
                     "labels": {w: i for i, w in enumerate(desc["classes"])}})
    part = bs.build_shard(("val", 0, records))
    assert part["count"] == 1
    (skipped,) = part["skipped"]
    assert skipped["key"] == keys[0] and "cannot read" in skipped["reason"]


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    d = tmp_path / "src" / "train" / desc["classes"][0]
    src = next(d.iterdir())
    os.rename(os.fsencode(src), os.fsencode(d) + b"/bad\xffname.JPEG")
    with pytest.raises(SourceError, match=r"bad.*name.JPEG.*not printable UTF-8"):
        build(tmp_path / "src", tmp_path / "out")


def test_a_source_moved_mid_build_finishes_it(tmp_path):
    """An unfinished build resumes from the source at its new path (its listing is checked
    against the plan); a finished one names both paths rather than vouch for the new one."""
    fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    reference = build(tmp_path / "src", tmp_path / "ref", shard_size=4)
    assert build(tmp_path / "src", tmp_path / "out", shard_size=4, part=0, parts=2) is None
    (tmp_path / "src").rename(tmp_path / "moved")
    done = build(tmp_path / "moved", tmp_path / "out", shard_size=4)
    assert done["splits"]["train"]["shards"] == reference["splits"]["train"]["shards"]
    shutil.rmtree(tmp_path / "ref")
    (tmp_path / "moved").rename(tmp_path / "again")
    with pytest.raises(BuildError, match=r"finished build of .*moved, not of .*again: if that is "
                                         r"the same source moved, .* nothing to do"):
        build(tmp_path / "again", tmp_path / "out", shard_size=4)


def test_a_split_with_no_readable_image_fails_until_fixed(tmp_path):
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    saved = {}
    for p in (tmp_path / "src" / "train").rglob("*.JPEG"):
        saved[p] = p.read_bytes()
        p.write_bytes(b"")
    with pytest.raises(BuildError, match=r"train: none of its 6 images could be read \(first: "
                                         r"train/.*JPEG: .*\); fix the files"):
        build(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    for p, data in saved.items():
        p.write_bytes(data)
    m = build(tmp_path / "src", tmp_path / "out")       # the same command, once fixed
    assert m["splits"]["train"]["count"] == len(desc["labels"]["train"])


def test_a_val_image_in_the_wrong_class_folder_is_named(tmp_path):
    desc = fixture(tmp_path / "src", "kaggle", quirks=False, **TINY)
    val = tmp_path / "src" / KAGGLE_DATA / "val"
    key, wnid = next(iter(expected_val(desc).items()))
    other = next(w for w in desc["classes"] if w != wnid)
    (val / other).mkdir()
    (val / f"{key}.JPEG").rename(val / other / f"{key}.JPEG")
    with pytest.raises(SourceError, match=f"val/{other}/{key}.JPEG: in the folder of {other}, but "
                                          f"{KAGGLE_VAL} labels it {wnid}"):
        build(tmp_path / "src", tmp_path / "out")


def test_parts_with_different_class_lists_never_mix(tmp_path):
    """A folder subset gains the devkit between two parts: its class list (the labels'
    meaning) changes, so the second part is refused."""
    fixture(tmp_path / "official", "official", **TINY)
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    shutil.rmtree(tmp_path / "src" / "train" / desc["classes"][0])
    shutil.rmtree(tmp_path / "src" / "val" / desc["classes"][0])
    assert build(tmp_path / "src", tmp_path / "out", shard_size=2, part=0, parts=2) is None
    shutil.copy(tmp_path / "official" / "ILSVRC2012_devkit_t12.tar.gz", tmp_path / "src")
    with pytest.raises(BuildError, match="unfinished build with other settings .*classes_sha256"):
        build(tmp_path / "src", tmp_path / "out", shard_size=2, part=1, parts=2)


def test_two_files_with_one_key_are_both_named(tmp_path):
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    a, b = desc["classes"][:2]
    src = next((tmp_path / "src" / "train" / a).iterdir())
    shutil.copy(src, tmp_path / "src" / "train" / b / src.with_suffix(".png").name)
    with pytest.raises(SourceError, match=f"occur twice .*train/{a}/{src.name} and "
                                          f"train/{b}/{src.stem}.png"):
        build(tmp_path / "src", tmp_path / "out")


def test_a_finished_build_that_lacks_a_setting_is_another_build(tmp_path):
    """A setting the manifest does not record is a difference, not a match."""
    fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    build(tmp_path / "src", tmp_path / "out")
    m = manifest(tmp_path / "out")
    assert build(tmp_path / "src", tmp_path / "out") == m          # the same build: complete
    del m["settings"]["classes_sha256"]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BuildError, match="other settings .*classes_sha256: None there"):
        build(tmp_path / "src", tmp_path / "out")


def test_a_dangling_link_named_jpeg_is_listed_as_skipped(tmp_path):
    """A link to an image that is gone is an image of the source that cannot be read, not a
    file "without an image suffix"."""
    desc = fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    wnid = desc["classes"][0]
    os.symlink(tmp_path / "gone.JPEG", tmp_path / "src" / "train" / wnid / "dangling_link.JPEG")
    train = build(tmp_path / "src", tmp_path / "out")["splits"]["train"]
    assert train["skipped"] == [{"key": "dangling_link", "path": f"train/{wnid}/dangling_link.JPEG",
                                 "reason": "a dangling symbolic link"}]
    assert train["ignored_files"] == 0 and train["source_count"] == len(desc["labels"]["train"]) + 1


def test_a_class_folder_without_images_is_refused(tmp_path):
    """Without a devkit the class folders are the class list: an empty one would be a class
    that no image trains (and that shifts every label after it)."""
    fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    (tmp_path / "src" / "train" / "n00000001").mkdir()
    (tmp_path / "src" / "train" / "n00000001" / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError, match=r"train/n00000001: a class folder with no images"):
        build(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, says", [
    ("", "is --source: the build would write into the ImageNet tree"),
    ("train/shards", r"is inside .*src/train: the build's files would lie among the images "
                     r"\(and a folder named like a WNID there is a class\)"),
])
def test_an_out_in_the_source_tree_is_refused(tmp_path, where, says):
    fixture(tmp_path / "src", "folder", quirks=False, **TINY)
    before = sorted(p for p in (tmp_path / "src").rglob("*"))
    out = tmp_path / "src" / where
    with pytest.raises(BuildError, match=f"--out {out} {says}; choose a directory outside"):
        build(tmp_path / "src", out)
    assert sorted(p for p in (tmp_path / "src").rglob("*")) == before
