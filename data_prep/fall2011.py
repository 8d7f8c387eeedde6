"""The Fall 2011 release of ImageNet (ImageNet-21k as people have it): 14,197,122 images
of 21,841 synsets, the pre-training data of the paper's starred Table 2 rows (section 6).

Three forms, told apart by what --source holds:

* ``fall11_whole.tar``: a tar of per-synset ``<wnid>.tar``, as image-net.org distributed
  it (1.31 TB); read in place, indexed like ILSVRC2012's train tar;
* its outer level extracted: ``<wnid>.tar`` files;
* fully extracted: ``<wnid>/`` folders (as Alibaba-MIIL/ImageNet21K's
  dataset_preprocessing/processing_script.sh leaves it); these two may mix.

No validation split was released, so one is held out: from each synset, the
``min(HOLDOUT, n // HOLDOUT_SHARE)`` images with the smallest blake2b("holdout:" + key)
(50 a synset, as ImageNet-21K-P holds out, but never more than a tenth of one: a
synset of 30 images gives 3, one under 10 none). The rule reads nothing but the keys
(not --seed), so every build holds out the same images.

The synsets found are the class list, so a synset without images (an empty tar or
folder) is refused, as the folder layout refuses an empty class folder: it would be a
class that nothing trains, and it shifts every label after it.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .records import WNID, Record, SourceError, image_files, is_image, key_of
from .tarindex import Part, cached_index, inner_tars, stamp

WHOLE_TAR = "fall11_whole.tar"
HOLDOUT, HOLDOUT_SHARE = 50, 10


def holdout_count(n: int) -> int:
    return min(HOLDOUT, n // HOLDOUT_SHARE)


def held_out(keys: list[str]) -> set[str]:
    """The keys of one synset's images that form the val split."""
    rank = sorted(keys, key=lambda k: (hashlib.blake2b(f"holdout:{k}".encode(), digest_size=16).digest(), k))
    return set(rank[:holdout_count(len(keys))])


@dataclass
class Synsets:
    """What --source holds: fall11_whole.tar's inner tars, or <wnid>.tar files and <wnid>/ folders."""
    root: Path
    whole: list[Part] | None  # the inner tars of fall11_whole.tar, in tar order
    tars: list[str]  # wnids of <wnid>.tar files
    dirs: list[str]  # wnids of <wnid>/ folders

    @property
    def wnids(self) -> list[str]:
        if self.whole is not None:
            return sorted({p.label[:-4] for p in self.whole})
        return sorted(self.tars + self.dirs)

    def origin(self, wnid: str) -> str:
        """Where a synset's images are, for a person."""
        if self.whole is not None:
            return f"{self.root / WHOLE_TAR}/{wnid}.tar"
        return f"{self.root / wnid}{'.tar' if wnid in self.tars else '/'}"

    def describe(self) -> str:
        if self.whole is not None:
            return f"{WHOLE_TAR}: {len(self.whole)} per-synset tars, read in place"
        return f"{len(self.tars)} per-synset <wnid>.tar files and {len(self.dirs)} <wnid>/ folders"


def detect(root: Path, others: bool) -> bool:
    """fall11_whole.tar; or, where no other layout is (ILSVRC's train tars extracted
    beside themselves leave n*.tar files too), <wnid>.tar files or <wnid>/ folders."""
    return (root / WHOLE_TAR).is_file() or not others and any(
        WNID.fullmatch(e.name.removesuffix(".tar")) for e in os.scandir(root))


def find(root: Path) -> Synsets:
    """The synsets under `root` (only fall11_whole.tar when it is there)."""
    whole = root / WHOLE_TAR
    if whole.is_file():
        parts = [p for p in inner_tars(str(whole)) if WNID.fullmatch(p.label.removesuffix(".tar"))]
        if not parts:
            raise SourceError(f"{whole}: holds no per-synset <wnid>.tar (expected n00004475.tar, ...)")
        return Synsets(root, parts, [], [])
    entries = list(os.scandir(root))
    tars = sorted(e.name[:-4] for e in entries if e.name.endswith(".tar") and WNID.fullmatch(e.name[:-4])
                  and e.is_file())
    dirs = sorted(e.name for e in entries if WNID.fullmatch(e.name) and e.is_dir())
    both = sorted(set(tars) & set(dirs))
    if both:
        raise SourceError(f"{root / both[0]}: both {both[0]}.tar and {both[0]}/ ({len(both)} synsets "
                          "twice); keep one of each")
    if not tars and not dirs:
        raise SourceError(f"{root}: no {WHOLE_TAR}, <wnid>.tar files or <wnid>/ folders")
    return Synsets(root, None, tars, dirs)


def _tar_groups(s: Synsets, cache_dir: Path | None, imap) -> Iterator[tuple[str, list, str]]:
    """(wnid, members, path of the tar they are in) of each synset packed as a tar."""
    if s.whole is not None:
        whole = str(s.root / WHOLE_TAR)
        members = cached_index(lambda: s.whole, cache_dir and cache_dir / "index-fall11_whole.tsv",
                               stamp([whole]), imap)
        tar_of = lambda label: whole  # noqa: E731
    elif s.tars:
        paths = [str(s.root / f"{w}.tar") for w in s.tars]
        members = cached_index(lambda: [Part(p, 0, None, Path(p).name) for p in paths],
                               cache_dir and cache_dir / "index-fall2011-tars.tsv", stamp(paths), imap)
        tar_of = lambda label: str(s.root / label)  # noqa: E731
    else:
        return
    for label, group in itertools.groupby(members, key=lambda m: m.name.split("/", 1)[0]):
        yield label.removesuffix(".tar"), list(group), tar_of(label)


def _synset_images(s: Synsets, split: str, cache_dir, imap, ignored: list[int]) -> Iterator[list[Record]]:
    """Each synset's images (a tar without members: none) and, counted in ignored[0], its
    other files."""
    prefix = f"{WHOLE_TAR}/" if s.whole is not None else ""
    for wnid, members, path in _tar_groups(s, cache_dir, imap):
        images = [m for m in members if is_image(m.name)]
        ignored[0] += len(members) - len(images)
        yield [Record(split, key_of(m.name), wnid, path, m.offset, m.size, prefix + m.name) for m in images]
    for wnid in s.dirs:
        files, others = image_files(s.root / wnid)
        ignored[0] += others
        yield [Record(split, key_of(e.name), wnid, e.path, -1, -1, f"{wnid}/{e.name}") for e in files]


def records(s: Synsets, split: str, cache_dir: Path | None, imap, ignored: list[int]) -> Iterator[Record]:
    """The images of `split` ("train" or the held-out "val"), synset by synset; SourceError
    at the end if a synset has none."""
    found = set()
    for images in _synset_images(s, split, cache_dir, imap, ignored):
        found.update(r.wnid for r in images[:1])
        val = held_out([r.key for r in images])
        yield from (r for r in images if (r.key in val) == (split == "val"))
    empty = [w for w in s.wnids if w not in found]
    if empty and found:          # none at all: the build says the split is empty, and why
        raise SourceError(f"{s.origin(empty[0])}: a synset with no images ({len(empty)} such: "
                          f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}); its class "
                          f"would have nothing to train it and shift every label after it: "
                          f"remove it, or add its images")
