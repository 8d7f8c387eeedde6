"""The ILSVRC releases' archives and devkits (read without extracting them).

A devkit's ``data/meta.mat`` holds a struct array ``synsets`` with fields
ILSVRC<year>_ID, WNID, words, num_children (and, in the real files, gloss,
children, wordnet_height, num_train_images). The 1000 leaf classes
(num_children == 0) have IDs 1..1000; the rest are inner WordNet nodes. A
ground truth file has one ID per line for ILSVRC<year>_<split>_00000001,
_00000002, ... in that order: the validation one is in the devkit, ILSVRC-2010's
test one (the only test labels ever released) a file of its own.

ID order is not sorted-WNID order (2012: ID 1 is n02119789, n01440764 is ID 449);
this project labels classes by sorted WNID, like torchvision, so everything here
is returned keyed by WNID and the caller sorts.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META = "data/meta.mat"  # devkit members are found by these suffixes, whatever the top folder


@dataclass(frozen=True)
class Release:
    """One ILSVRC year's files as distributed. The 2010 names are those Fuel's converter
    reads (mila-iqia/fuel, fuel/converters/ilsvrc2010.py)."""
    layout: str
    year: int
    train_tar: str
    val_tar: str
    devkit: str
    devkit_dir: str  # the devkit's top folder
    test_tar: str | None = None
    test_truth: str | None = None  # beside the archives: released after the competition
    patch_tar: str | None = None  # replacements for blank originals: <...>/<split>/<name>.JPEG

    @property
    def id_field(self) -> str:
        return f"ILSVRC{self.year}_ID"

    @property
    def val_truth(self) -> str:
        return f"data/ILSVRC{self.year}_validation_ground_truth.txt"

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test") if self.test_tar else ("train", "val")

    def tar(self, split: str) -> str:
        return {"train": self.train_tar, "val": self.val_tar, "test": self.test_tar}[split]

    def key(self, split: str, n: int) -> str:
        """The key (file stem) of the n-th (from 1) image of a val or test tar."""
        return f"ILSVRC{self.year}_{split}_{n:08d}"


ILSVRC2012 = Release("official", 2012, "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                     "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12")
ILSVRC2010 = Release("ilsvrc2010", 2010, "ILSVRC2010_images_train.tar", "ILSVRC2010_images_val.tar",
                     "ILSVRC2010_devkit-1.0.tar.gz", "devkit-1.0", test_tar="ILSVRC2010_images_test.tar",
                     test_truth="ILSVRC2010_test_ground_truth.txt", patch_tar="patch_images.tar")
DEVKIT_NAME, GROUND_TRUTH = ILSVRC2012.devkit, ILSVRC2012.val_truth


@dataclass
class Devkit:
    id_to_wnid: dict[int, str]  # leaf synsets only
    words: dict[str, str]  # wnid -> human-readable names
    num_train_images: dict[str, int] | None  # wnid -> count, when meta.mat has the field
    val_wnids: list[str]  # wnid of ILSVRC<year>_val_00000001, _00000002, ...
    release: Release = ILSVRC2012
    test_wnids: list[str] | None = None  # from the release's separate test ground truth

    @property
    def wnids(self) -> list[str]:
        return sorted(self.id_to_wnid.values())

    def labels(self, split: str) -> dict[str, str]:
        """key ('ILSVRC2012_val_%08d', 'ILSVRC2010_test_%08d') -> wnid."""
        wnids = self.val_wnids if split == "val" else self.test_wnids or []
        return {self.release.key(split, i): w for i, w in enumerate(wnids, start=1)}

    def val_labels(self) -> dict[str, str]:
        return self.labels("val")


def _member(tar: tarfile.TarFile, suffix: str) -> bytes:
    for m in tar.getmembers():
        if m.isfile() and m.name.endswith(suffix):
            f = tar.extractfile(m)
            assert f is not None
            return f.read()
    raise FileNotFoundError(f"{tar.name}: no member ending in {suffix!r}")


def _scalar(v):
    """A struct field loaded with squeeze_me: a Python scalar, or a 1-element array."""
    return v.item() if isinstance(v, np.ndarray) and v.size == 1 else v


def parse_meta(data: bytes, id_field: str = ILSVRC2012.id_field
               ) -> tuple[dict[int, str], dict[str, str], dict[str, int] | None]:
    import scipy.io  # only the devkit layouts need it

    synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    synsets = np.atleast_1d(synsets)
    names = synsets.dtype.names or ()
    if id_field not in names:  # another year's devkit under this year's name
        raise ValueError(f"meta.mat: no field {id_field} (it has {', '.join(names)})")
    id_to_wnid, words, counts = {}, {}, {}
    for s in synsets:
        if int(_scalar(s["num_children"])) != 0:
            continue
        wnid = str(_scalar(s["WNID"]))
        id_to_wnid[int(_scalar(s[id_field]))] = wnid
        words[wnid] = str(_scalar(s["words"])) if "words" in names else ""
        if "num_train_images" in names:
            counts[wnid] = int(_scalar(s["num_train_images"]))
    if len(set(id_to_wnid.values())) != len(id_to_wnid):
        raise ValueError("meta.mat: duplicate WNIDs among leaf synsets")
    return id_to_wnid, words, (counts if "num_train_images" in names else None)


def ground_truth(data: bytes, id_to_wnid: dict[int, str], where: str, year: int) -> list[str]:
    """One ID a line -> the WNIDs, in file order."""
    try:
        ids = [int(t) for t in data.split()]
    except ValueError as e:
        raise ValueError(f"{where}: not one ILSVRC{year}_ID a line ({e})") from None
    unknown = sorted(set(ids) - set(id_to_wnid))
    if unknown:
        raise ValueError(f"{where}: ILSVRC{year}_IDs not in meta.mat: {unknown[:10]}")
    return [id_to_wnid[i] for i in ids]


def read_devkit(path: Path | str, release: Release = ILSVRC2012) -> Devkit:
    """The devkit archive at `path`; with the release's test ground truth if it has one
    (looked for beside the devkit)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            meta = _member(tar, META)
            truth = _member(tar, release.val_truth)
        id_to_wnid, words, counts = parse_meta(meta, release.id_field)
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as e:  # scipy: ValueError
        raise ValueError(f"{path}: not a readable ILSVRC{release.year} devkit ({type(e).__name__}: {e})") from None
    val = ground_truth(truth, id_to_wnid, f"{path}/{release.val_truth}", release.year)
    test = None
    test_path = Path(path).parent / (release.test_truth or "")
    if release.test_truth and test_path.is_file():
        test = ground_truth(test_path.read_bytes(), id_to_wnid, str(test_path), release.year)
    return Devkit(id_to_wnid, words, counts, val, release, test)
