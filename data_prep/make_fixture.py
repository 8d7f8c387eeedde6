"""python -m data_prep.make_fixture: a small fake ImageNet in any of the five layouts.

Each class has its own colour, stripe orientation and stripe frequency, with
per-image phase, jitter and noise, so a CNN can learn it; images are real
JPEGs of assorted sizes (180..500 px a side, any aspect ratio). The devkit
numbers classes by an ILSVRC2012_ID permutation that is deliberately not
sorted-WNID order, and its meta.mat has inner (non-leaf) synsets, as the real
one does. ``--quirks`` adds ImageNet's odd files: a PNG named .JPEG, a CMYK
JPEG, a greyscale JPEG, a palette PNG with transparency, a JPEG with
extraneous bytes (a libjpeg warning), a large JPEG (decoded via draft), a
truncated JPEG and a zero-byte file (the last two are unreadable), and a CMYK
and a greyscale-PNG file in val.

The same --seed gives the same image bytes under the same keys in every
layout, so the three ILSVRC-2012 layouts give identical shards. ``fixture.json``
at the top says what is there (labels, expected counts) for tests and the demo.

``ilsvrc2010`` writes ILSVRC-2010's files: a test split too (--val-per-class
images a class, labelled by ILSVRC2010_test_ground_truth.txt), a devkit
numbering classes by an ILSVRC2010_ID permutation, a gzip-compressed JPEG in
the train tar (the real one has them), and patch_images.tar: for a few images
of each split the tar holds a blank grey "not available" image and
patch_images.tar the real one. ``fall2011`` writes fall11_whole.tar, a tar of
per-synset tars of --train-per-class images each, and no val split (the
builder holds one out); with --quirks a synset also holds a text file.
"""
from __future__ import annotations

import argparse
import colorsys
import csv
import gzip
import io
import json
import multiprocessing
import os
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from repro.exits import EXIT_DONE, entry_point
from repro.provenance import mark_generated
from .devkit import META, Release
from .fall2011 import WHOLE_TAR
from .sources import KAGGLE_DATA, KAGGLE_MAPPING, KAGGLE_VAL, LAYOUTS, RELEASES

# Real ILSVRC2012 classes (Imagenette's ten, then Imagewoof's ten); more classes get synthetic ids.
REAL_WNIDS = {
    "n01440764": "tench, Tinca tinca", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw, chainsaw", "n03028079": "church, church building", "n03394916": "French horn, horn",
    "n03417042": "garbage truck, dustcart", "n03425413": "gas pump, gasoline pump", "n03445777": "golf ball",
    "n03888605": "parachute, chute", "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle", "n02089973": "English foxhound", "n02093754": "Border terrier",
    "n02096294": "Australian terrier", "n02099601": "golden retriever", "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed, Samoyede", "n02115641": "dingo, warrigal, warragal, Canis dingo",
}
TRAIN_QUIRKS = ["png", "cmyk", "grey", "palette", "extraneous", "large", "truncated", "empty"]
VAL_QUIRKS = ["cmyk", "grey_png"]
UNREADABLE = {"truncated", "empty"}
INNER_SYNSETS = 3  # non-leaf synsets in meta.mat, ids after the leaves


POOL_FROM = 2000  # images; below this a pool's start-up costs more than it saves


def fixture_wnids(n: int) -> list[str]:
    real = list(REAL_WNIDS)
    return real[:n] + [f"n{99000000 + i:08d}" for i in range(max(0, n - len(real)))]  # 8 digits


# ---- images ----------------------------------------------------------------------------
def class_image(c: int, n_classes: int, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB image of class `c`: class colour and stripes, random size, phase and noise."""
    w, h = size or (int(rng.integers(180, 501)), int(rng.integers(180, 501)))
    short = min(w, h)
    hue = (c / n_classes + rng.normal(0, 0.01)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.55 + 0.3 * ((c * 7) % 3) / 2, 0.75)) * 255
    theta = (c * 0.61803398875 * np.pi) % np.pi + rng.normal(0, 0.05)
    cycles = 3 + (c * 5) % 9  # stripes per shorter side
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / short
    wave = np.sin(2 * np.pi * cycles * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
    img = base[None, None, :] * (0.65 + 0.35 * wave[..., None]) + rng.normal(0, 1, 3) * 12
    img += rng.normal(0, 10, (h, w, 1)) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def image_bytes(kind: str, c: int, n_classes: int, rng: np.random.Generator) -> bytes:
    """File contents of a normal image (kind 'jpeg') or of one of the quirks."""
    if kind == "empty":
        return b""
    im = class_image(c, n_classes, rng, (1200, 900) if kind == "large" else None)
    if kind in ("jpeg", "large"):
        return _jpeg(im)
    if kind == "png":
        return _png(im)
    if kind == "cmyk":
        return _jpeg(im.convert("CMYK"))
    if kind == "grey":
        return _jpeg(im.convert("L"))
    if kind == "gzip":  # ILSVRC-2010's train tar holds such files under .JPEG names
        return gzip.compress(_jpeg(im), mtime=0)
    if kind == "grey_png":
        return _png(im.convert("L"))
    if kind == "palette":
        p = im.quantize(64)
        return _png(p, transparency=0)
    if kind == "extraneous":
        data = _jpeg(im)
        return data[:-2] + b"\x00\x00\x00" + data[-2:]  # bytes before EOI: "Corrupt JPEG data" warning
    if kind == "truncated":
        data = _jpeg(im)
        return data[: len(data) * 2 // 5]
    raise ValueError(kind)


# ---- the fake dataset --------------------------------------------------------------------
def blank_jpeg() -> bytes:
    """A flat grey image: what ILSVRC-2010's tars hold where patch_images.tar has the real one."""
    return _jpeg(Image.new("RGB", (500, 374), (128, 128, 128)))


def plan(classes: int, train_per_class: int, val_per_class: int, quirks: bool, seed: int,
         layout: str = "official") -> dict:
    """What the fixture holds: keys, labels, kinds and ILSVRC<year>_IDs; no bytes yet."""
    rng = np.random.default_rng([seed, 0])
    wnids = fixture_wnids(classes)
    ids = np.arange(1, classes + 1)
    while classes > 1 and np.array_equal(ids, np.arange(1, classes + 1)):
        ids = rng.permutation(classes) + 1  # ILSVRC<year>_ID of wnids[i]; never sorted-WNID order
    ilsvrc_id = {w: int(i) for w, i in zip(wnids, ids)}
    train = {}  # key -> (wnid, kind)
    for c, w in enumerate(wnids):
        for n in sorted(rng.choice(np.arange(1, 20000), train_per_class, replace=False)):
            train[f"{w}_{n}"] = (w, "jpeg")
    val_items = [(w, "jpeg") for w in wnids for _ in range(val_per_class)]
    if quirks:
        for q, kind in enumerate(TRAIN_QUIRKS):
            w = wnids[q % classes]
            train[f"{w}_{90001 + q}"] = (w, kind)
        val_items += [(wnids[q % classes], kind) for q, kind in enumerate(VAL_QUIRKS)]
    order = rng.permutation(len(val_items))
    year = RELEASES.get(layout, RELEASES["official"]).year
    val = {f"ILSVRC{year}_val_{i + 1:08d}": val_items[j] for i, j in enumerate(order)}
    p = {"seed": seed, "classes": sorted(wnids), "ilsvrc_id": ilsvrc_id, "train": train, "val": val}
    if layout == "ilsvrc2010":
        _plan_2010(p, wnids, val_per_class, rng)
    if layout == "fall2011":
        p["val"] = {}  # no val split released: the builder holds one out of the synsets
    return p


def _plan_2010(p: dict, wnids: list[str], per_class: int, rng: np.random.Generator) -> None:
    """ILSVRC-2010's extras: a test split, patched images, a gzipped train JPEG."""
    items = [(w, "jpeg") for w in wnids for _ in range(per_class)]
    p["test"] = {f"ILSVRC2010_test_{i + 1:08d}": items[j] for i, j in enumerate(rng.permutation(len(items)))}
    plain = {s: sorted(k for k, (_, kind) in p[s].items() if kind == "jpeg") for s in ("train", "val", "test")}
    p["patched"] = {s: sorted(rng.choice(keys, min(len(keys), 2 if s == "train" else 1), replace=False).tolist())
                    for s, keys in plain.items()}
    rest = [k for k in plain["train"] if k not in p["patched"]["train"]]
    if rest:
        k = rest[int(rng.integers(len(rest)))]
        p["train"][k] = (p["train"][k][0], "gzip")


def _bytes_for(p: dict, split: str, key: str) -> bytes:
    wnid, kind = p[split][key]
    c = fixture_wnids(len(p["classes"])).index(wnid)
    digits = int("".join(ch for ch in key if ch.isdigit()) or 0)
    rng = np.random.default_rng([p["seed"], {"train": 1, "val": 2, "test": 3}[split], c, digits])
    return image_bytes(kind, c, len(p["classes"]), rng)


def _draw_all(p: dict) -> dict[str, dict[str, bytes]]:
    """Every image's bytes, per split and key. Each image has its own seed, so large
    fixtures are drawn by a process pool ("spawn": the caller may have threads, which
    a fork could copy mid-lock) in any order with the same result."""
    splits = [s for s in ("train", "val", "test") if s in p]
    jobs = [(p, s, k) for s in splits for k in sorted(p[s])]
    if len(jobs) < POOL_FROM:
        data = [_bytes_for(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(os.cpu_count() or 1, 16)) as pool:
            data = pool.starmap(_bytes_for, jobs, chunksize=64)
    files = {s: {} for s in splits}
    for (_, s, k), b in zip(jobs, data):
        files[s][k] = b
    return files


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1_338_000_000, 0o644
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _meta_mat(p: dict, counts: dict[str, int], id_field: str) -> bytes:
    fields = [id_field, "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    n = len(p["classes"])
    by_id = sorted(p["ilsvrc_id"].items(), key=lambda kv: kv[1])
    rows = [(i, w, REAL_WNIDS.get(w, f"synthetic class {w}"), "a fixture class", 0, np.zeros((0,), np.uint8), 0,
             counts[w]) for w, i in by_id]
    for k in range(INNER_SYNSETS):  # inner nodes: ids after the leaves, children among the leaves
        kids = np.array([i for _, i in by_id][k::INNER_SYNSETS], np.uint16)
        rows.append((n + 1 + k, f"n{98000000 + k:08d}", f"inner node {k}", "a fixture inner synset", len(kids),
                     kids, 1 + k, int(sum(counts[w] for w, i in by_id if i in kids))))
    arr = np.empty((len(rows), 1), dtype=[(f, "O") for f in fields])
    for r, row in enumerate(rows):
        arr[r, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": arr})
    return buf.getvalue()


def _truth(p: dict, split: str) -> str:
    """A ground truth file: the ID of each image's class, in key order."""
    return "".join(f"{p['ilsvrc_id'][p[split][k][0]]}\n" for k in sorted(p[split]))


def _devkit(p: dict, release: Release) -> bytes:
    counts = {w: 0 for w in p["classes"]}
    for w, _ in p["train"].values():
        counts[w] += 1
    raw = _tar_bytes([(f"{release.devkit_dir}/{META}", _meta_mat(p, counts, release.id_field)),
                      (f"{release.devkit_dir}/{release.val_truth}", _truth(p, "val").encode())])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def _name(key: str) -> str:
    return f"{key}.JPEG"  # ImageNet names every file .JPEG, PNGs included


def _class_tars(p: dict, files: dict, rng: np.random.Generator, data=None,
                extra: dict | None = None) -> list[tuple[str, bytes]]:
    """<wnid>.tar of each class's training images (bytes from `data`, plus `extra` members
    by wnid), members and tars in shuffled order."""
    inner = []
    for w in p["classes"]:
        keys = [k for k in files["train"] if p["train"][k][0] == w]
        keys = [keys[i] for i in rng.permutation(len(keys))]
        members = [(_name(k), (data or files["train"].get)(k)) for k in keys] + (extra or {}).get(w, [])
        inner.append((f"{w}.tar", _tar_bytes(members)))
    return [inner[i] for i in rng.permutation(len(inner))]


def _write_release(out: Path, p: dict, files: dict, rng: np.random.Generator, release: Release) -> None:
    """The tarballs and devkit of an ILSVRC release (2010: the test truth and patches too)."""
    patched = p.get("patched", {})
    blank = blank_jpeg()
    data = lambda s: lambda k: blank if k in patched.get(s, ()) else files[s][k]  # noqa: E731
    (out / release.train_tar).write_bytes(_tar_bytes(_class_tars(p, files, rng, data("train"))))
    for split in release.splits[1:]:
        keys = sorted(files[split])
        keys = [keys[i] for i in rng.permutation(len(keys))]  # member order is not name order
        (out / release.tar(split)).write_bytes(_tar_bytes([(_name(k), data(split)(k)) for k in keys]))
    (out / release.devkit).write_bytes(_devkit(p, release))
    if release.test_truth:
        (out / release.test_truth).write_text(_truth(p, "test"))
    if release.patch_tar:
        (out / release.patch_tar).write_bytes(_tar_bytes(
            [(f"patch_images/{s}/{_name(k)}", files[s][k]) for s in release.splits for k in patched[s]]))


def _write_tree(out: Path, p: dict, files: dict, rng: np.random.Generator, layout: str) -> None:
    """The folder or Kaggle tree."""
    top = out / KAGGLE_DATA if layout == "kaggle" else out
    for k, data in files["train"].items():
        d = top / "train" / p["train"][k][0]
        d.mkdir(parents=True, exist_ok=True)
        (d / _name(k)).write_bytes(data)
    for k, data in files["val"].items():
        d = top / "val" / (p["val"][k][0] if layout == "folder" else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / _name(k)).write_bytes(data)
    (top / "val").mkdir(parents=True, exist_ok=True)
    if layout == "kaggle":
        (out / KAGGLE_MAPPING).write_text(
            "".join(f"{w} {REAL_WNIDS.get(w, 'synthetic class ' + w)}\n" for w in p["classes"]))
        vkeys = sorted(p["val"])
        with open(out / KAGGLE_VAL, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["ImageId", "PredictionString"])
            for i in rng.permutation(len(vkeys)):
                k = vkeys[i]
                wr.writerow([k, f"{p['val'][k][0]} 10 12 150 160 "])


def _write_fall2011(out: Path, p: dict, files: dict, rng: np.random.Generator, quirks: bool) -> None:
    """fall11_whole.tar: a tar of per-synset tars (with --quirks, one holds a text file)."""
    extra = {p["classes"][0]: [("synset_notes.txt", b"not an image\n")]} if quirks else None
    inner = _class_tars(p, files, rng, extra=extra)
    (out / WHOLE_TAR).write_bytes(_tar_bytes(inner))


def make_fixture(out, layout: str, classes: int, train_per_class: int, val_per_class: int,
                 quirks: bool = False, seed: int = 0) -> dict:
    """Write the fixture under `out`; returns (and writes to out/fixture.json) its description."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if classes < 1 or train_per_class < 0 or val_per_class < 0:
        raise ValueError("need classes >= 1 and non-negative image counts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(classes, train_per_class, val_per_class, quirks, seed, layout)
    rng = np.random.default_rng([seed, 3])
    files = _draw_all(p)
    if layout in RELEASES:
        _write_release(out, p, files, rng, RELEASES[layout])
    elif layout == "fall2011":
        _write_fall2011(out, p, files, rng, quirks)
    else:
        _write_tree(out, p, files, rng, layout)
    desc = describe(p, layout)
    (out / "fixture.json").write_text(json.dumps(desc, indent=1) + "\n")
    mark_generated(out, f"data_prep.make_fixture (layout {layout}, {classes} classes, seed {seed}): "
                        f"a stand-in of ImageNet, not ImageNet")
    return desc


def describe(p: dict, layout: str) -> dict:
    """fixture.json: labels, odd files and the counts a build should find, per split (fall2011:
    every image under train, before the builder holds val out)."""
    splits = [s for s in ("train", "val", "test") if s in p]
    desc = {
        "layout": layout, "seed": p["seed"], "classes": p["classes"], "ilsvrc_id": p["ilsvrc_id"],
        "labels": {s: {k: p[s][k][0] for k in sorted(p[s])} for s in splits},
        "quirks": {s: {k: p[s][k][1] for k in sorted(p[s]) if p[s][k][1] != "jpeg"} for s in splits},
        "unreadable": {s: sorted(k for k in p[s] if p[s][k][1] in UNREADABLE) for s in splits},
    }
    desc["expected_count"] = {s: len(p[s]) - len(desc["unreadable"][s]) for s in splits}
    if "patched" in p:
        desc["patched"] = p["patched"]
    return desc


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.make_fixture", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layout", required=True, choices=LAYOUTS)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=6)
    ap.add_argument("--val-per-class", type=int, default=2)
    ap.add_argument("--quirks", action="store_true", help="add ImageNet's odd files")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    d = make_fixture(a.out, a.layout, a.classes, a.train_per_class, a.val_per_class, a.quirks, a.seed)
    counts = " and ".join(f"{len(v)} {s}" for s, v in d["labels"].items())
    print(f"wrote {a.out} ({a.layout}): {len(d['classes'])} classes, {counts} files "
          f"({sum(map(len, d['unreadable'].values()))} unreadable on purpose)")
    return EXIT_DONE


if __name__ == "__main__":
    raise SystemExit(main())
