"""`repro predict --checkpoint C IMAGE...`: the paper's test-time procedure on your own
images: shorter side to 256, the centre 256x256 (exactly as data_prep builds the
shards), the ten 227 crops with the mean image subtracted, softmax averaged; the five
most probable classes by name. The 256x256 pixels go to the net as decoded: the shards'
JPEG re-encode (quality 95) is skipped, so a shard image and the same file given here
differ by that one lossy step. A photo is first turned upright as its EXIF orientation
says (a phone stores a portrait shot sideways); the shards ignore EXIF, as torchvision's
ImageFolder does, so that they hold what other loaders read (PAPER_NOTES, "EXIF").

The mean image and the class names come from the shards the checkpoint was trained on:
`--data SHARDS`, or the run's own shards when the checkpoint sits in a run directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.image import UnreadableImage, decode_256
from data_prep.manifest import class_names
from repro.cli import positive
from repro.data.shards import read_manifest
from repro.distributed import pick_device
from repro.evaluate import EvalError, check_members, checkpoint_file, load_member, stats_path
from repro.tracking import run_data_dir


CHUNK = 64      # images a forward pass (x10 crops)


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]     # (class name, probability), most probable first


def shards_for(checkpoint: Path, data: str | Path | None) -> Path:
    """--data, else the shards of the run the checkpoint belongs to (RUN/checkpoints/C)."""
    data = data or run_data_dir(checkpoint_file(checkpoint).resolve().parent.parent)
    if data is None:
        raise EvalError(f"{checkpoint}: give --data SHARDS (the shards it was trained on: their "
                        f"stats.npz holds the mean image, their manifest the class names)")
    return Path(data)


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3,256,256): the file upright, its shorter side to 256, its centre, as the
    shards hold an image."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        pixels = decode_256(data, exif=True).pixels
    except UnreadableImage as e:
        raise EvalError(f"{path}: not an image this can read ({e})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def predict(checkpoint: str | Path, images: list[str | Path], data: str | Path | None = None,
            top: int = 5, device: str = "auto", ten_crop: bool = True) -> list[Prediction]:
    data_dir = shards_for(Path(checkpoint), data)
    manifest = read_manifest(data_dir)
    member = load_member(checkpoint, stats_path(data_dir), pick_device(device))
    check_members([member], data_dir)
    names = class_names(manifest)
    pixels = [read_image(Path(p)) for p in images]               # every file checked first
    out = []
    for i in range(0, len(pixels), CHUNK):
        batch = torch.stack(pixels[i:i + CHUNK]).to(member.normalizer.device)
        values, indices = member.probs(batch, ten_crop).cpu().topk(min(top, len(names)), dim=1)
        out += [Prediction(Path(p), [(names[c], v) for v, c in zip(vs, cs)])
                for p, vs, cs in zip(images[i:i + CHUNK], values.tolist(), indices.tolist())]
    return out


def format_predictions(predictions: list[Prediction]) -> str:
    lines = []
    for p in predictions:
        lines.append(f"{p.path}:")
        lines += [f"  {prob:7.2%}  {name}" for name, prob in p.top]
    return "\n".join(lines)


# ---- `repro predict`'s options (repro.cli runs it) -----------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, ... files")
    p.add_argument("--data", help="the shards it was trained on (stats.npz, class names); "
                                  "default: the run's own, if the checkpoint is in a run dir")
    p.add_argument("--top", type=positive, default=5)
    p.add_argument("--centre", action="store_true", help="the centre crop, not the 10 crops")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
