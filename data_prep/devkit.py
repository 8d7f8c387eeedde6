"""The ILSVRC2012 devkit (ILSVRC2012_devkit_t12.tar.gz), read without extracting it.

``data/meta.mat`` holds a struct array ``synsets`` with fields ILSVRC2012_ID,
WNID, words, num_children (and, in the real file, gloss, children,
wordnet_height, num_train_images). The 1000 leaf classes (num_children == 0)
have ILSVRC2012_IDs 1..1000; the rest are inner WordNet nodes.
``data/ILSVRC2012_validation_ground_truth.txt`` has one ILSVRC2012_ID per line
for ILSVRC2012_val_00000001, _00000002, ... in that order.

ILSVRC2012_ID order is not sorted-WNID order (ID 1 is n02119789, n01440764 is
ID 449); this project labels classes by sorted WNID, like torchvision, so
everything here is returned keyed by WNID and the caller sorts.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEVKIT_NAME = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


@dataclass
class Devkit:
    id_to_wnid: dict[int, str]  # leaf synsets only
    words: dict[str, str]  # wnid -> human-readable names
    num_train_images: dict[str, int] | None  # wnid -> count, when meta.mat has the field
    val_wnids: list[str]  # wnid of ILSVRC2012_val_00000001, _00000002, ...

    @property
    def wnids(self) -> list[str]:
        return sorted(self.id_to_wnid.values())

    def val_labels(self) -> dict[str, str]:
        """key ('ILSVRC2012_val_%08d') -> wnid."""
        return {f"ILSVRC2012_val_{i:08d}": w for i, w in enumerate(self.val_wnids, start=1)}


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


def parse_meta(data: bytes) -> tuple[dict[int, str], dict[str, str], dict[str, int] | None]:
    import scipy.io  # only the official layout (and a folder with the devkit) needs it

    synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    synsets = np.atleast_1d(synsets)
    names = synsets.dtype.names or ()
    id_to_wnid, words, counts = {}, {}, {}
    for s in synsets:
        if int(_scalar(s["num_children"])) != 0:
            continue
        wnid = str(_scalar(s["WNID"]))
        id_to_wnid[int(_scalar(s["ILSVRC2012_ID"]))] = wnid
        words[wnid] = str(_scalar(s["words"])) if "words" in names else ""
        if "num_train_images" in names:
            counts[wnid] = int(_scalar(s["num_train_images"]))
    if len(set(id_to_wnid.values())) != len(id_to_wnid):
        raise ValueError("meta.mat: duplicate WNIDs among leaf synsets")
    return id_to_wnid, words, (counts if "num_train_images" in names else None)


def read_devkit(path: Path | str) -> Devkit:
    try:
        with tarfile.open(path, "r:*") as tar:
            meta = _member(tar, META)
            truth = _member(tar, GROUND_TRUTH)
        id_to_wnid, words, counts = parse_meta(meta)
        ids = [int(t) for t in truth.split()]
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as e:  # scipy: ValueError
        raise ValueError(f"{path}: not a readable ILSVRC2012 devkit ({type(e).__name__}: {e})") from None
    unknown = sorted(set(ids) - set(id_to_wnid))
    if unknown:
        raise ValueError(f"{path}: ground truth uses ILSVRC2012_IDs not in meta.mat: {unknown[:10]}")
    return Devkit(id_to_wnid, words, counts, [id_to_wnid[i] for i in ids])
