"""ImageNet as users have it: detect the layout, list its images, read their bytes.

Five layouts (see docs/data_prep.md):

* ``official``: ILSVRC2012_img_train.tar (1000 inner <wnid>.tar), ILSVRC2012_img_val.tar
  (flat ILSVRC2012_val_%08d.JPEG) and ILSVRC2012_devkit_t12.tar.gz, read in place;
* ``ilsvrc2010``: the same for ILSVRC-2010 (devkit.ILSVRC2010 names the files), with a
  test split labelled by ILSVRC2010_test_ground_truth.txt and patch_images.tar, whose
  images replace the originals of the same name;
* ``folder``: train/<wnid>/*, val/<wnid>/* (torchvision ImageFolder);
* ``kaggle``: ILSVRC/Data/CLS-LOC/{train/<wnid>/*, val/*}, LOC_synset_mapping.txt,
  LOC_val_solution.csv;
* ``fall2011``: the Fall 2011 release, per-synset tars or folders, val held out (fall2011.py).

Each lists, per split, records (in no particular order: the plan sorts them) with the
image's WNID; labels are the index of the WNID in sorted-WNID order, the same for every
layout, so the 2012 layouts of the same images give the same shards.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import fall2011
from .devkit import DEVKIT_NAME, ILSVRC2010, ILSVRC2012, Devkit, read_devkit
from .records import (IMAGE_SUFFIXES, WNID, Record, SourceError, image_files, is_image,  # noqa: F401
                      key_of, printable_utf8, read_record)
from .tarindex import Part, TarMember, cached_index, index_tar, inner_tars, stamp

LAYOUTS = ("official", "ilsvrc2010", "folder", "kaggle", "fall2011")
SPLITS = ("train", "val", "test")
RELEASES = {"official": ILSVRC2012, "ilsvrc2010": ILSVRC2010}
TRAIN_TAR, VAL_TAR = ILSVRC2012.train_tar, ILSVRC2012.val_tar
KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_MAPPING, KAGGLE_VAL = "LOC_synset_mapping.txt", "LOC_val_solution.csv"
# ILSVRC2012 itself, used as the expected counts when 1000 classes and no devkit say otherwise.
ILSVRC2012_COUNTS = {"train": 1_281_167, "val": 50_000}
GROUND = {"val": "validation", "test": "test"}

EXPECTED = f"""expected one of these layouts:
  official:   {TRAIN_TAR}, {VAL_TAR}, {DEVKIT_NAME} (read in place)
  ilsvrc2010: {ILSVRC2010.train_tar}, {ILSVRC2010.val_tar}, {ILSVRC2010.test_tar}, {ILSVRC2010.devkit},
              {ILSVRC2010.test_truth}, {ILSVRC2010.patch_tar} (read in place)
  folder:     train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (torchvision ImageFolder)
  kaggle:     {KAGGLE_DATA}/train/<wnid>/*.JPEG, {KAGGLE_DATA}/val/*.JPEG, {KAGGLE_MAPPING}, {KAGGLE_VAL}
  fall2011:   {fall2011.WHOLE_TAR} (a tar of <wnid>.tar), or <wnid>.tar files or <wnid>/ folders"""


@dataclass
class Source:
    root: Path
    layout: str
    wnids: list[str]  # sorted: the label of wnids[i] is i
    words: dict[str, str] = field(default_factory=dict)
    devkit: Devkit | None = None
    splits: tuple[str, ...] = ("train", "val")  # the splits to build
    found: str = ""  # what detection found, for a person
    synsets: fall2011.Synsets | None = None
    patches: dict[str, dict[str, TarMember]] = field(default_factory=dict)  # split -> key -> member
    # images the layout lists but cannot label, per split: {key, path, reason}
    unlabelled: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    # files in the trees that are not images by their suffix (e.g. .txt), per split
    ignored: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    _kaggle_val_labels: dict[str, str] | None = None

    # ---- listing ---------------------------------------------------------------------
    def records(self, split: str, cache_dir: Path | None = None, imap: Callable = map) -> Iterator[Record]:
        """All images of `split`, in no particular order. `imap` (ordered) parallelises tar indexing."""
        lister = {"official": self._official, "ilsvrc2010": self._official, "folder": self._folder,
                  "kaggle": self._kaggle, "fall2011": self._fall2011}[self.layout]
        known = set(self.wnids)
        for r in lister(split, cache_dir, imap):
            if not printable_utf8(r.key):
                raise SourceError(f"{r.origin!r}: a file name that is not printable UTF-8 cannot be a "
                                  "WebDataset key; rename it")
            if r.wnid not in known:
                raise SourceError(f"{split}: classes not in the class list: ['{r.wnid}'] (first: {r.origin})")
            yield r

    def expected(self, split: str) -> tuple[int | None, str]:
        """How many images the devkit (or ILSVRC2012 itself) says `split` has, and who says so."""
        dk = self.devkit
        if split == "train" and dk and dk.num_train_images:
            # over the devkit's classes, not the ones found: a class folder missing is a shortfall
            return sum(dk.num_train_images.values()), f"{dk.release.devkit} meta.mat num_train_images"
        if split == "val" and dk:
            return len(dk.val_wnids), f"{dk.release.devkit} validation ground truth"
        if split == "test" and dk and dk.test_wnids is not None:
            return len(dk.test_wnids), dk.release.test_truth
        if split == "val" and self.layout == "kaggle" and self._kaggle_val_labels is not None:
            return len(self._kaggle_val_labels), KAGGLE_VAL
        if len(self.wnids) == 1000 and self.layout in ("official", "folder", "kaggle"):
            return ILSVRC2012_COUNTS[split], "ILSVRC2012 (1000 classes)"
        return None, ""

    def trees(self) -> list[Path]:
        """The directories that hold the images (none for the tarballs)."""
        return {"official": [], "ilsvrc2010": [], "folder": [self.root / s for s in SPLITS],
                "kaggle": [self.root / KAGGLE_DATA], "fall2011": [self.root]}[self.layout]

    # ---- official tarballs -----------------------------------------------------------
    def _official(self, split, cache_dir, imap) -> Iterable[Record]:
        release = self.devkit.release
        tar = self.root / release.tar(split)
        labels = self.devkit.labels(split) if split != "train" else None
        patches, patched = self.patches.get(split, {}), set()
        for m in _index(tar, cache_dir, imap, nested=(split == "train")):
            key = key_of(m.name)
            if split == "train":
                wnid = m.name.split("/", 1)[0].removesuffix(".tar")
            else:
                wnid = labels.get(key)
                if wnid is None:
                    self.unlabelled[split].append({"key": key, "path": f"{tar.name}/{m.name}",
                                                   "reason": f"not in the {GROUND[split]} ground truth"})
                    continue
            p = patches.get(key)
            if p is None:
                yield Record(split, key, wnid, str(tar), m.offset, m.size, f"{tar.name}/{m.name}")
            else:  # Fuel's converter does the same: the replacement of the same name
                patched.add(key)
                yield Record(split, key, wnid, str(self.root / release.patch_tar), p.offset, p.size,
                             f"{release.patch_tar}/{p.name}")
        unused = sorted(set(patches) - patched)
        if unused:
            raise SourceError(f"{self.root / release.patch_tar}: {len(unused)} {split} images replace nothing "
                              f"in {tar.name} (first: {patches[unused[0]].name})")

    # ---- extracted trees -------------------------------------------------------------
    def _files(self, split: str, directory: Path) -> Iterable[Path]:
        images, ignored = image_files(directory)
        self.ignored[split] += ignored
        return [Path(e.path) for e in images]

    def _class_dirs(self, split: str, top: Path, labels: dict[str, str] | None = None,
                    who: str = "") -> Iterable[Record]:
        """The images in top/<wnid>/ folders; where `labels` (from `who`) also label one, they
        must agree (a val image moved to the wrong folder would train a wrong label silently)."""
        for wnid in class_dirs(top):
            for p in self._files(split, top / wnid):
                key, origin = key_of(p.name), str(p.relative_to(self.root))
                if labels and labels.get(key, wnid) != wnid:
                    raise SourceError(f"{origin}: in the folder of {wnid}, but {who} labels it "
                                      f"{labels[key]}")
                yield Record(split, key, wnid, str(p), -1, -1, origin)

    def _labelled_files(self, split: str, top: Path, labels: dict[str, str], who: str) -> Iterable[Record]:
        """The images directly in `top` (a flat val folder), labelled by key from `who`."""
        for p in self._files(split, top):
            key, origin = key_of(p.name), str(p.relative_to(self.root))
            if key not in labels:
                self.unlabelled[split].append({"key": key, "path": origin, "reason": f"not in {who}"})
                continue
            yield Record(split, key, labels[key], str(p), -1, -1, origin)

    def _folder(self, split, cache_dir, imap) -> Iterable[Record]:
        top = self.root / split
        labels, who = None, ""
        if split == "val":  # a flat val folder, as extracted from the tarball: the devkit labels it
            labels, who = ((self.devkit.val_labels(), f"{DEVKIT_NAME}'s validation ground truth")
                           if self.devkit else ({}, f"val/<wnid>/ folders, and no {DEVKIT_NAME} to label it"))
            yield from self._labelled_files(split, top, labels, who)
        yield from self._class_dirs(split, top, labels, who)

    def _kaggle(self, split, cache_dir, imap) -> Iterable[Record]:
        top = self.root / KAGGLE_DATA / split
        if split == "train":
            yield from self._class_dirs(split, top)
            return
        yield from self._labelled_files(split, top, self._kaggle_val_labels, KAGGLE_VAL)
        # val sorted into <wnid>/ folders (valprep.sh)
        yield from self._class_dirs(split, top, self._kaggle_val_labels, KAGGLE_VAL)

    def _fall2011(self, split, cache_dir, imap) -> Iterable[Record]:
        ignored = [0]
        yield from fall2011.records(self.synsets, split, cache_dir, imap, ignored)
        if split == "train":  # non-images belong to no split: counted once
            self.ignored[split] += ignored[0]


def _has_image(directory: Path) -> bool:
    """Whether `directory` holds an entry named like an image (the listing stops at it)."""
    with os.scandir(directory) as entries:
        return any(is_image(e.name) for e in entries if not e.name.startswith("."))


def class_dirs(top: Path) -> list[str]:
    """The class folders under `top`: those named like WNIDs (lost+found and the like are
    not classes). A class still packed as <wnid>.tar is an error, not a missing class."""
    entries = list(os.scandir(top))          # one listing (it may be network storage)
    packed = sorted(e.name for e in entries
                    if e.name.endswith(".tar") and WNID.fullmatch(e.name[:-4]) and e.is_file())
    if packed:
        raise SourceError(f"{top / packed[0]}: a class archive not extracted ({len(packed)} in {top}); "
                          f"extract each into {top}/<wnid>/, or point --source at the official tarballs")
    return sorted(e.name for e in entries if e.is_dir() and WNID.fullmatch(e.name))


def _index(tar: Path, cache_dir: Path | None, imap, nested: bool) -> Iterator[TarMember]:
    """A tar's members (a tar of tars: its inner tars' members), cached in the output directory."""
    parts = (lambda: inner_tars(str(tar))) if nested else (lambda: [Part(str(tar), 0, None, None)])
    cache = cache_dir / f"index-{tar.stem}.tsv" if cache_dir else None
    return cached_index(parts, cache, stamp([str(tar)]), imap if nested else map)


def read_patches(path: Path) -> dict[str, dict[str, TarMember]]:
    """patch_images.tar: split -> key -> member, from <...>/<split>/<name>.JPEG members."""
    patches: dict[str, dict[str, TarMember]] = {s: {} for s in SPLITS}
    for m in index_tar(str(path)):
        if not is_image(m.name):
            continue
        split = m.name.split("/")[-2] if "/" in m.name else ""
        if split not in patches:
            raise SourceError(f"{path}: {m.name} is in no train/, val/ or test/ folder")
        if patches[split].setdefault(key_of(m.name), m) is not m:
            raise SourceError(f"{path}: {m.name} replaces the same {split} image as another member")
    return patches


# ---- detection ------------------------------------------------------------------------
def detect_layouts(root: Path) -> list[str]:
    found = [layout for layout, r in RELEASES.items()
             if any((root / r.tar(s)).is_file() for s in r.splits)]
    if (root / "train").is_dir() and _subdirs(root / "train"):
        found.append("folder")
    if (root / KAGGLE_DATA).is_dir():
        found.append("kaggle")
    if fall2011.detect(root, others=bool(found)):
        found.append("fall2011")
    return found


def _subdirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _require(root: Path, layout: str, names: Iterable[str]) -> None:
    # archives and lists (names with a suffix) are files, the rest folders
    missing = [n for n in names if not ((root / n).is_file() if "." in n else (root / n).is_dir())]
    if missing:
        raise SourceError(f"{root} looks like the {layout} layout but lacks {', '.join(missing)}\n{EXPECTED}")


def _open_release(root: Path, layout: str, splits: tuple[str, ...]) -> Source:
    r = RELEASES[layout]
    needed = [r.devkit] + [r.tar(s) for s in splits] + ([r.test_truth] if "test" in splits else [])
    _require(root, layout, needed + ([r.patch_tar] if r.patch_tar else []))
    dk = read_devkit(root / r.devkit, r)
    patches = read_patches(root / r.patch_tar) if r.patch_tar else {}
    found = ", ".join(needed)
    if r.patch_tar:
        found += f", {r.patch_tar} ({', '.join(f'{len(patches[s])} {s}' for s in splits)} replacements)"
    return Source(root, layout, dk.wnids, dk.words, dk, splits, found, patches=patches)


def _open_folder(root: Path, layout: str, splits: tuple[str, ...]) -> Source:
    _require(root, layout, splits if "train" in splits else ("train",) + splits)
    dk = read_devkit(root / DEVKIT_NAME) if (root / DEVKIT_NAME).is_file() else None
    # With the devkit its 1000 classes are the class list (as for the tarballs), so a class
    # folder missing shifts no label; it shows in the count check instead.
    classes = dk.wnids if dk else class_dirs(root / "train")
    if not classes:
        raise SourceError(f"{root / 'train'} holds no class folders named like WNIDs (n01440764, ...)\n{EXPECTED}")
    empty = [] if dk else [w for w in classes if not _has_image(root / "train" / w)]
    if empty and len(empty) < len(classes):   # all empty: the build says the split is
        raise SourceError(f"{root / 'train' / empty[0]}: a class folder with no images ({len(empty)} "
                          f"such); its class would have nothing to train it and shift every label "
                          f"after it: remove it, or add its images")
    found = ", ".join(f"{s}/" for s in splits) + (f", {DEVKIT_NAME}" if dk else "")
    return Source(root, layout, classes, dk.words if dk else {}, dk, splits, found)


def _open_kaggle(root: Path, layout: str, splits: tuple[str, ...]) -> Source:
    needed = [KAGGLE_MAPPING] + [str(KAGGLE_DATA / s) for s in splits] + ([KAGGLE_VAL] if "val" in splits else [])
    _require(root, layout, needed)
    words = {}
    mapping = root / KAGGLE_MAPPING
    for n, line in enumerate(_read_utf8(mapping).splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not WNID.fullmatch(wnid):
                raise SourceError(f"{mapping}:{n}: {wnid!r} is not a WNID (expected 'n01440764 tench, ...')")
            words[wnid] = name
    src = Source(root, layout, sorted(words), words, None, splits, ", ".join(needed))
    if "val" in splits:
        src._kaggle_val_labels = read_kaggle_val(root / KAGGLE_VAL)
    return src


def _open_fall2011(root: Path, layout: str, splits: tuple[str, ...]) -> Source:
    s = fall2011.find(root)
    found = (f"{s.describe()}; val held out: min({fall2011.HOLDOUT}, n // {fall2011.HOLDOUT_SHARE}) "
             "images a synset")
    return Source(root, layout, s.wnids, {}, None, splits, found, synsets=s)


OPEN = {"official": _open_release, "ilsvrc2010": _open_release, "folder": _open_folder,
        "kaggle": _open_kaggle, "fall2011": _open_fall2011}
LAYOUT_SPLITS = {layout: ("train", "val", "test") if layout == "ilsvrc2010" else ("train", "val")
                 for layout in LAYOUTS}


def open_source(root: Path | str, layout: str = "auto", splits: Iterable[str] | None = None) -> Source:
    """Detect (or check) the layout of `root` and read its class list and labels. splits:
    those to build (None: all the layout has)."""
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
    has = LAYOUT_SPLITS[layout]
    splits = tuple(s for s in SPLITS if s in (has if splits is None else set(splits)))
    if set(splits) - set(has):
        raise SourceError(f"the {layout} layout has no {', '.join(sorted(set(splits) - set(has)))} split "
                          f"(it has {', '.join(has)}; only ILSVRC-2010's test labels were released)")
    return OPEN[layout](root, layout, splits)


def _read_utf8(path: Path) -> str:
    """A text file of the Kaggle layout (a BOM, as spreadsheet exports write, is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_kaggle_val(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId -> the WNID that starts its PredictionString."""
    labels = {}
    with io.StringIO(_read_utf8(path), newline="") as f:
        rows = csv.reader(f)
        header = [h.strip().lower() for h in next(rows, [])]
        if "imageid" not in header or "predictionstring" not in header:
            raise SourceError(f"{path}: expected the header 'ImageId,PredictionString', got {','.join(header)!r}")
        image, pred = header.index("imageid"), header.index("predictionstring")
        for n, row in enumerate(rows, 2):
            if not any(cell.strip() for cell in row):
                continue
            fields = row[pred].split() if len(row) > max(image, pred) else []
            if not fields or not WNID.fullmatch(fields[0]):
                raise SourceError(f"{path}:{n}: no WNID at the start of the PredictionString ({row!r})")
            key = key_of(row[image].strip())  # also ids written with their .JPEG suffix
            if labels.setdefault(key, fields[0]) != fields[0]:
                raise SourceError(f"{path}:{n}: {key} is labelled {labels[key]} above and {fields[0]} here")
    return labels
