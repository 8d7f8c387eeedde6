"""ImageNet as users have it: detect the layout, list its images, read their bytes.

Three layouts of the same images (see docs/data_prep.md):

* ``official``: ILSVRC2012_img_train.tar (1000 inner <wnid>.tar), ILSVRC2012_img_val.tar
  (flat ILSVRC2012_val_%08d.JPEG) and ILSVRC2012_devkit_t12.tar.gz, read in place;
* ``folder``: train/<wnid>/*, val/<wnid>/* (torchvision ImageFolder);
* ``kaggle``: ILSVRC/Data/CLS-LOC/{train/<wnid>/*, val/*}, LOC_synset_mapping.txt,
  LOC_val_solution.csv.

Each gives, per split, records sorted by key (the file's stem) with the
image's WNID; labels are the index of the WNID in sorted-WNID order, the same
for every layout, so the three layouts of the same images give the same shards.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from . import atomic
from .devkit import DEVKIT_NAME, Devkit, read_devkit
from .tarindex import Member, index_tar, read_at

LAYOUTS = ("official", "folder", "kaggle")
SPLITS = ("train", "val")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_MAPPING, KAGGLE_VAL = "LOC_synset_mapping.txt", "LOC_val_solution.csv"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
# ILSVRC2012 itself, used as the expected counts when 1000 classes and no devkit say otherwise.
ILSVRC2012_COUNTS = {"train": 1_281_167, "val": 50_000}

EXPECTED = f"""expected one of these layouts:
  official: {TRAIN_TAR}, {VAL_TAR}, {DEVKIT_NAME} (read in place)
  folder:   train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (torchvision ImageFolder)
  kaggle:   {KAGGLE_DATA}/train/<wnid>/*.JPEG, {KAGGLE_DATA}/val/*.JPEG, {KAGGLE_MAPPING}, {KAGGLE_VAL}"""


class SourceError(Exception):
    """The source directory is not (a complete) one of the known layouts."""


class Record(NamedTuple):
    split: str
    key: str  # the file's stem: the sample's __key__
    wnid: str
    path: str  # file to read
    offset: int  # -1: the whole file; else the member's offset inside the tar at `path`
    size: int
    origin: str  # where a person finds it, relative to the source root


def read_record(r: Record) -> bytes:
    if r.offset < 0:
        with open(r.path, "rb") as f:
            return f.read()
    return read_at(r.path, r.offset, r.size)


def key_of(name: str) -> str:
    """The stem of a file name; dots would split a WebDataset key, so they become '_'."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem.replace(".", "_")


@dataclass
class Source:
    root: Path
    layout: str
    wnids: list[str]  # sorted: the label of wnids[i] is i
    words: dict[str, str] = field(default_factory=dict)
    devkit: Devkit | None = None
    # images the layout lists but cannot label, per split: {key, path, reason}
    unlabelled: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    # files in the trees that are not images by their suffix (e.g. .txt), per split
    ignored: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})

    # ---- listing ---------------------------------------------------------------------
    def records(self, split: str, cache_dir: Path | None = None, imap: Callable = map) -> list[Record]:
        """All images of `split`, sorted by key. `imap` parallelises tar indexing."""
        lister = {"official": self._official, "folder": self._folder, "kaggle": self._kaggle}[self.layout]
        records = sorted(lister(split, cache_dir, imap), key=lambda r: r.key)
        dup = [a.key for a, b in zip(records, records[1:]) if a.key == b.key]
        if dup:
            raise SourceError(f"{split}: {len(dup)} file names occur twice (keys must be unique): {dup[:5]}")
        known = set(self.wnids)
        stray = sorted({r.wnid for r in records} - known)
        if stray:
            raise SourceError(f"{split}: classes not in the class list: {stray[:10]}")
        return records

    def expected(self, split: str) -> tuple[int | None, str]:
        """How many images the devkit (or ILSVRC2012 itself) says `split` has, and who says so."""
        dk = self.devkit
        if split == "train" and dk and dk.num_train_images:
            return sum(dk.num_train_images[w] for w in self.wnids), f"{DEVKIT_NAME} meta.mat num_train_images"
        if split == "val" and dk:
            return len(dk.val_wnids), f"{DEVKIT_NAME} validation ground truth"
        if split == "val" and self.layout == "kaggle" and self._kaggle_val_labels is not None:
            return len(self._kaggle_val_labels), KAGGLE_VAL
        if len(self.wnids) == 1000:
            return ILSVRC2012_COUNTS[split], "ILSVRC2012 (1000 classes)"
        return None, ""

    # ---- official tarballs -----------------------------------------------------------
    def _official(self, split, cache_dir, imap) -> Iterable[Record]:
        tar = self.root / (TRAIN_TAR if split == "train" else VAL_TAR)
        members = _cached_index(tar, cache_dir, imap, nested=(split == "train"))
        labels = self.devkit.val_labels() if split == "val" else None
        for m in members:
            key = key_of(m.name)
            if split == "train":
                wnid = m.name.split("/", 1)[0].removesuffix(".tar")
            else:
                wnid = labels.get(key)
                if wnid is None:
                    self.unlabelled[split].append(
                        {"key": key, "path": f"{tar.name}/{m.name}", "reason": "not in the validation ground truth"})
                    continue
            yield Record(split, key, wnid, str(tar), m.offset, m.size, f"{tar.name}/{m.name}")

    # ---- extracted trees -------------------------------------------------------------
    def _files(self, split: str, directory: Path) -> Iterable[Path]:
        for e in sorted(os.scandir(directory), key=lambda e: e.name):
            if e.name.startswith(".") or not e.is_file():
                continue
            if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                yield Path(e.path)
            else:
                self.ignored[split] += 1

    def _class_dirs(self, split: str, top: Path) -> Iterable[Record]:
        for wnid in _subdirs(top):
            for p in self._files(split, top / wnid):
                yield Record(split, key_of(p.name), wnid, str(p), -1, -1, str(p.relative_to(self.root)))

    def _folder(self, split, cache_dir, imap) -> Iterable[Record]:
        top = self.root / split
        if split == "val" and any(self._files(split, top)):
            raise SourceError(f"{top} holds image files directly; the folder layout needs val/<wnid>/* "
                              "(torchvision's layout). Use the official tarballs with the devkit instead.")
        self.ignored[split] = 0
        return self._class_dirs(split, top)

    _kaggle_val_labels: dict[str, str] | None = None

    def _kaggle(self, split, cache_dir, imap) -> Iterable[Record]:
        top = self.root / KAGGLE_DATA / split
        if split == "train":
            yield from self._class_dirs(split, top)
            return
        labels = self._kaggle_val_labels
        for p in self._files(split, top):
            key = key_of(p.name)
            origin = str(p.relative_to(self.root))
            if key not in labels:
                self.unlabelled[split].append({"key": key, "path": origin, "reason": f"not in {KAGGLE_VAL}"})
                continue
            yield Record(split, key, labels[key], str(p), -1, -1, origin)


def _subdirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


# ---- the train tar index, built in parallel and cached in the output directory ----------
def _index_inner(arg) -> list[Member]:
    path, inner = arg
    return [Member(f"{inner.name}/{m.name}", m.offset, m.size)
            for m in index_tar(path, inner.offset, inner.size)]


def _cached_index(tar: Path, cache_dir: Path | None, imap, nested: bool) -> list[Member]:
    st = tar.stat()
    stamp = f"# {tar.resolve()} {st.st_size} {st.st_mtime_ns}\n"
    cache = cache_dir / f"index-{tar.stem}.tsv" if cache_dir else None
    if cache and cache.exists():
        lines = cache.read_text().splitlines(keepends=True)
        if lines and lines[0] == stamp:
            return [Member(n, int(o), int(s)) for n, o, s in (ln.rstrip("\n").split("\t") for ln in lines[1:])]
    members = index_tar(str(tar))
    if nested:
        inner = [m for m in members if m.name.endswith(".tar")]
        members = [m for part in imap(_index_inner, [(str(tar), m) for m in inner]) for m in part]
    if cache:
        atomic.write_bytes(cache, (stamp + "".join(f"{m.name}\t{m.offset}\t{m.size}\n" for m in members)).encode())
    return members


# ---- detection ------------------------------------------------------------------------
def detect_layouts(root: Path) -> list[str]:
    found = []
    if (root / TRAIN_TAR).is_file() or (root / VAL_TAR).is_file():
        found.append("official")
    if (root / "train").is_dir() and _subdirs(root / "train"):
        found.append("folder")
    if (root / KAGGLE_DATA).is_dir():
        found.append("kaggle")
    return found


def _require(root: Path, layout: str, names: Iterable[str]) -> None:
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise SourceError(f"{root} looks like the {layout} layout but lacks {', '.join(missing)}\n{EXPECTED}")


def open_source(root: Path | str, layout: str = "auto", splits: Iterable[str] = SPLITS) -> Source:
    """Detect (or check) the layout of `root` and read its class list and labels."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise SourceError(f"--source {root} is not a directory\n{EXPECTED}")
    found = detect_layouts(root)
    if layout == "auto":
        if not found:
            listing = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
            raise SourceError(f"--source {root} is none of the known ImageNet layouts "
                              f"(it holds: {listing})\n{EXPECTED}")
        if len(found) > 1:
            raise SourceError(f"--source {root} matches several layouts ({', '.join(found)}); choose one with --layout")
        layout = found[0]
    elif layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    splits = list(splits)

    if layout == "official":
        _require(root, layout, [DEVKIT_NAME] + [TRAIN_TAR if s == "train" else VAL_TAR for s in splits])
        dk = read_devkit(root / DEVKIT_NAME)
        return Source(root, layout, dk.wnids, dk.words, dk)
    if layout == "folder":
        _require(root, layout, splits if "train" in splits else ["train"] + splits)
        dk = read_devkit(root / DEVKIT_NAME) if (root / DEVKIT_NAME).is_file() else None
        return Source(root, layout, _subdirs(root / "train"), dk.words if dk else {}, dk)
    # kaggle
    _require(root, layout, [KAGGLE_MAPPING] + [str(KAGGLE_DATA / s) for s in splits]
             + ([KAGGLE_VAL] if "val" in splits else []))
    words = {}
    for line in (root / KAGGLE_MAPPING).read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            words[wnid] = name
    src = Source(root, layout, sorted(words), words)
    if "val" in splits:
        with open(root / KAGGLE_VAL, newline="") as f:
            src._kaggle_val_labels = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    return src

