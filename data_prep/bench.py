"""python -m data_prep.bench --images N: shard-build throughput against a naive baseline.

Writes N synthetic JPEGs with an ImageNet-like size mix (a folder layout), then
times, on the same files:

* naive: one process, Pillow ``open().convert("RGB").resize().crop().save()``
  to one JPEG file per image (the same bicubic filter and quality), in this
  interpreter and, with ``--baseline-python``, in another (e.g. stock Pillow);
* the whole ``build_shards`` (listing, decode, resize, encode, tar, sha256,
  statistics, manifest) with 1 worker and with every core.

Prints a markdown table of images/s and images/s per core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from .build_shards import build_shards
from .image import crop_geometry
from .make_fixture import class_image

# (share, long side range). ILSVRC2012 photos average ~470x390 and most are 500 px on the long side
# (Flickr's medium size); a few are camera originals. This mix keeps that average.
MIXES = {
    "imagenet": [(0.80, (500, 500)), (0.15, (150, 499)), (0.04, (600, 1024)), (0.01, (1200, 2592))],
    "typical": [(1.0, (500, 500))],
    "large": [(1.0, (1200, 2592))],
}
QUALITY_SRC = 94  # ~0.5 bytes/pixel at 500 px; ImageNet averages ~110 KB per ~500x375 photo


def photo(c: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A fixture-style class image; larger than 500 px it is upscaled with light noise, like a camera
    original (~0.35 bytes/pixel), not a 500 px texture tiled out (whose entropy would swamp the decoder)."""
    w, h = size
    f = min(1.0, 500 / max(w, h))
    im = class_image(c, 20, rng, (round(w * f), round(h * f)))
    if f < 1:
        a = np.asarray(im.resize((w, h), Image.Resampling.BICUBIC)).astype(np.float32)
        a += rng.normal(0, 3, (h, w, 1)).astype(np.float32)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    return im


def make_images(root: Path, n: int, mix: str, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    shares, ranges = zip(*MIXES[mix])
    files = []
    for i in range(n):
        lo, hi = ranges[rng.choice(len(ranges), p=np.array(shares) / sum(shares))]
        long = int(rng.integers(lo, hi + 1))
        short = int(long * rng.choice([0.75, 0.667, 0.8, 0.5625, 1.0, 0.6]))
        size = (long, short) if rng.random() < 0.75 else (short, long)
        c = i % 20
        d = root / "train" / f"n{10000000 + c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"n{10000000 + c:08d}_{i}.JPEG"
        photo(c, rng, size).save(p, "JPEG", quality=QUALITY_SRC)
        files.append(p)
    (root / "val").mkdir(exist_ok=True)
    return files


def naive(files: list[Path], out: Path, quality: int = 95) -> tuple[float, float]:
    """The plain script, one process: (wall seconds, CPU seconds) for all files."""
    out.mkdir(parents=True, exist_ok=True)
    t, c = time.perf_counter(), time.process_time()
    for p in files:
        im = Image.open(p).convert("RGB")
        w, h, left, top = crop_geometry(*im.size)
        im = im.resize((w, h), Image.Resampling.BICUBIC).crop((left, top, left + 256, top + 256))
        im.save(out / (p.stem + ".jpg"), "JPEG", quality=quality)
    return time.perf_counter() - t, time.process_time() - c


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (pool workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed_build(src: Path, out: Path, workers: int, shard_size: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    t, c = time.perf_counter(), _cpu()
    build_shards(src, out, workers=workers, splits=("train",), shard_size=shard_size, log=lambda *x: None)
    return time.perf_counter() - t, _cpu() - c


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pil_kind(version: str) -> str:
    return f"Pillow-SIMD {version}" if ".post" in version else f"Pillow {version}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--mix", choices=sorted(MIXES), default="imagenet", help="image size mix")
    ap.add_argument("--workdir", help="where to put images and outputs (default: a temp dir, removed)")
    ap.add_argument("--baseline-python",
                    help="another interpreter (e.g. with stock Pillow) to time the naive script in")
    ap.add_argument("--shard-size", type=int, default=0,
                    help="images per shard; 0 = images / (8 * cores), so every core has shards to build")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each row reports its best")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--naive-only", help=argparse.SUPPRESS)  # internal: time naive on this source, print seconds
    a = ap.parse_args(argv)

    if a.naive_only:
        files = sorted(Path(a.naive_only).glob("train/*/*.JPEG"))
        with tempfile.TemporaryDirectory() as t:
            wall, cpu = naive(files, Path(t))
            print(json.dumps({"wall": wall, "cpu": cpu, "pil": PIL.__version__}))
        return 0

    cores = len(os.sched_getaffinity(0))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-shards-"))
    files = source_images(work, a.images, a.mix)
    shard_size = a.shard_size or max(1, a.images // (8 * cores))
    here = pil_kind(PIL.__version__)
    rows = summarise(time_rounds(a, work, files, shard_size, cores, here), a.images)
    info = {"images": a.images, "mix": a.mix,
            "source_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
            "shard_size": shard_size, "repeat": a.repeat, "cpu": cpu_model(), "cores": cores,
            "load_avg": os.getloadavg(), "python": platform.python_version(),
            "pil": PIL.__version__, "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"),
            "rows": rows}
    print_table(info, here)
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1) + "\n")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def source_images(work: Path, images: int, mix: str) -> list[Path]:
    """The source JPEGs under work/src, reused from an earlier run in this --workdir with
    the same count and mix (e.g. timed with another Pillow)."""
    src, stamp = work / "src", {"images": images, "mix": mix}
    marker = work / "src.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return sorted(src.glob("train/*/*.JPEG"))
    shutil.rmtree(src, ignore_errors=True)
    t = time.perf_counter()
    files = make_images(src, images, mix)
    marker.write_text(json.dumps(stamp))
    print(f"{images} images written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return files


def time_rounds(a, work: Path, files: list[Path], shard_size: int, cores: int,
                here: str) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(what, workers) -> (wall, cpu) seconds of each round. Rounds are interleaved, so a
    busy spell on a shared machine hits every row alike."""
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(a.repeat):
        runs.setdefault((f"naive script, {here}", 1), []).append(naive(files, work / "naive"))
        if a.baseline_python:
            r = subprocess.run([a.baseline_python, "-m", "data_prep.bench", "--naive-only",
                                str(work / "src")], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parents[1])
            res = json.loads(r.stdout.strip().splitlines()[-1])
            runs.setdefault((f"naive script, {pil_kind(res['pil'])}", 1), []).append(
                (res["wall"], res["cpu"]))
        for w in sorted({1, cores}):
            runs.setdefault((f"build_shards, {here}", w), []).append(
                timed_build(work / "src", work / f"shards-w{w}", w, shard_size))
    return runs


def summarise(runs: dict, images: int) -> list[dict]:
    """A row per (what, workers): its best round, and its speed against the naive scripts."""
    rows = []
    for (what, w), rs in runs.items():
        wall, cpu = min(r[0] for r in rs), min(r[1] for r in rs)
        rows.append({"what": what, "workers": w, "wall_s": wall, "cpu_s": cpu,
                     "images_per_s": images / wall, "per_core": images / wall / w,
                     "per_cpu_s": images / cpu})
    naive_rows = [r for r in rows if r["what"].startswith("naive")]
    base = min(naive_rows, key=lambda r: r["per_cpu_s"])  # the slower naive script: stock Pillow if given
    for r in rows:
        r["vs_naive_same_pil"] = r["per_cpu_s"] / rows[0]["per_cpu_s"]
        r["vs_baseline"] = r["per_cpu_s"] / base["per_cpu_s"]
        r["baseline"] = r is base
    return rows


def print_table(info: dict, here: str) -> None:
    rows = info["rows"]
    base = next(r for r in rows if r["baseline"])
    print(f"{info['images']} images ({info['source_mb']:.0f} MB, {info['mix']} mix), shard size "
          f"{info['shard_size']}, best of {info['repeat']}; {info['cpu']}, {info['cores']} cores, "
          f"load average {info['load_avg'][0]:.2f}; Python {info['python']}, {here}, numpy "
          f"{info['numpy']}; {info['date']}")
    print(f"baseline: {base['what']}; per-core speed = images per CPU-second (robust to other load)")
    print("| run | workers | images/s (wall) | per core (wall) | images per CPU-second | vs baseline | "
          f"vs naive {here} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['workers']} | {r['images_per_s']:.0f} | {r['per_core']:.0f} | "
              f"{r['per_cpu_s']:.0f} | {r['vs_baseline']:.2f}x | {r['vs_naive_same_pil']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
