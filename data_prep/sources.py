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
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from . import atomic
from .devkit import DEVKIT_NAME, Devkit, read_devkit
from .tarindex import TarMember, index_tar, read_at

LAYOUTS = ("official", "folder", "kaggle")
SPLITS = ("train", "val")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_MAPPING, KAGGLE_VAL = "LOC_synset_mapping.txt", "LOC_val_solution.csv"
WNID = re.compile(r"n\d{8}")  # a WordNet noun id: the name of every ImageNet class folder
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
        for r in records:
            if not _printable_utf8(r.key):
                raise SourceError(f"{r.origin!r}: a file name that is not printable UTF-8 cannot be a "
                                  "WebDataset key; rename it")
        dup = [f"{a.origin} and {b.origin}" for a, b in zip(records, records[1:]) if a.key == b.key]
        if dup:
            raise SourceError(f"{split}: {len(dup)} file names occur twice (a file's stem is its "
                              f"sample key, which must be unique): {'; '.join(dup[:5])}")
        known = set(self.wnids)
        stray = [r for r in records if r.wnid not in known]
        if stray:
            raise SourceError(f"{split}: classes not in the class list: "
                              f"{sorted({r.wnid for r in stray})[:10]} (first: {stray[0].origin})")
        return records

    def expected(self, split: str) -> tuple[int | None, str]:
        """How many images the devkit (or ILSVRC2012 itself) says `split` has, and who says so."""
        dk = self.devkit
        if split == "train" and dk and dk.num_train_images:
            # over the devkit's classes, not the ones found: a class folder missing is a shortfall
            return sum(dk.num_train_images.values()), f"{DEVKIT_NAME} meta.mat num_train_images"
        if split == "val" and dk:
            return len(dk.val_wnids), f"{DEVKIT_NAME} validation ground truth"
        if split == "val" and self.layout == "kaggle" and self._kaggle_val_labels is not None:
            return len(self._kaggle_val_labels), KAGGLE_VAL
        if len(self.wnids) == 1000:
            return ILSVRC2012_COUNTS[split], "ILSVRC2012 (1000 classes)"
        return None, ""

    def trees(self) -> list[Path]:
        """The directories that hold the images (none for the tarballs)."""
        return {"official": [], "folder": [self.root / s for s in SPLITS],
                "kaggle": [self.root / KAGGLE_DATA]}[self.layout]

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
            if e.name.startswith("."):
                continue
            image = os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
            if image and (e.is_file() or _dangling(e)):   # a dangling one: skipped when read
                yield Path(e.path)
            elif image or not e.is_dir():  # a text file, a folder named x.JPEG, a FIFO
                self.ignored[split] += 1

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

    _kaggle_val_labels: dict[str, str] | None = None

    def _kaggle(self, split, cache_dir, imap) -> Iterable[Record]:
        top = self.root / KAGGLE_DATA / split
        if split == "train":
            yield from self._class_dirs(split, top)
            return
        yield from self._labelled_files(split, top, self._kaggle_val_labels, KAGGLE_VAL)
        # val sorted into <wnid>/ folders (valprep.sh)
        yield from self._class_dirs(split, top, self._kaggle_val_labels, KAGGLE_VAL)


def _dangling(e: os.DirEntry) -> bool:
    return e.is_symlink() and not os.path.exists(e.path)


def _has_image(directory: Path) -> bool:
    """Whether `directory` holds an entry named like an image (the listing stops at it)."""
    with os.scandir(directory) as entries:
        return any(os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                   for e in entries if not e.name.startswith("."))


def _printable_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # undecodable bytes in a file name arrive as lone surrogates
    except UnicodeEncodeError:
        return False
    return name.isprintable()


def _subdirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


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


# ---- the train tar index, built in parallel and cached in the output directory ----------
def _index_inner(arg) -> list[TarMember]:
    path, inner = arg
    return [TarMember(f"{inner.name}/{m.name}", m.offset, m.size)
            for m in index_tar(path, inner.offset, inner.size)]


def _cached_index(tar: Path, cache_dir: Path | None, imap, nested: bool) -> list[TarMember]:
    st = tar.stat()
    stamp = f"# {tar.resolve()} {st.st_size} {st.st_mtime_ns}\n"
    cache = cache_dir / f"index-{tar.stem}.tsv" if cache_dir else None
    if cache and cache.exists():
        lines = cache.read_text().splitlines(keepends=True)
        if lines and lines[0] == stamp:
            return [TarMember(n, int(o), int(s)) for n, o, s in (ln.rstrip("\n").split("\t") for ln in lines[1:])]
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
    # archives and lists (names with a suffix) are files, the rest folders
    missing = [n for n in names if not ((root / n).is_file() if "." in n else (root / n).is_dir())]
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
        return Source(root, layout, classes, dk.words if dk else {}, dk)
    # kaggle
    _require(root, layout, [KAGGLE_MAPPING] + [str(KAGGLE_DATA / s) for s in splits]
             + ([KAGGLE_VAL] if "val" in splits else []))
    words = {}
    mapping = root / KAGGLE_MAPPING
    for n, line in enumerate(_read_utf8(mapping).splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not WNID.fullmatch(wnid):
                raise SourceError(f"{mapping}:{n}: {wnid!r} is not a WNID (expected 'n01440764 tench, ...')")
            words[wnid] = name
    src = Source(root, layout, sorted(words), words)
    if "val" in splits:
        src._kaggle_val_labels = read_kaggle_val(root / KAGGLE_VAL)
    return src


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

