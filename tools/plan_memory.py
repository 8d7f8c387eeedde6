"""Peak memory and time of listing and planning a Fall 2011-shaped source (no image is
decoded: only what build_shards does before the first shard), by size.

    python tools/plan_memory.py WORK_DIR SYNSETSxPER_SYNSET [...]      e.g. 2000x50 8000x50 2000x200

For each size it writes WORK_DIR/SxM/fall11_whole.tar of S per-synset tars of M tiny
placeholder members, then, in a fresh process per size, opens it as build_shards does,
indexes it (cached, as in a build) and writes the train and held-out val plans, and
prints the peak RSS and the seconds. The last column is what a list of every training
record costs when held in memory (what the build did before the plan moved to disk).
Run it against another checkout with PYTHONPATH=that/checkout to compare versions.
"""
import io
import json
import resource
import shutil
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_source(root: Path, synsets: int, per_synset: int) -> None:
    """fall11_whole.tar with `synsets` inner tars of `per_synset` 8-byte members."""
    if (root / "fall11_whole.tar").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "fall11_whole.tar.part", "w", format=tarfile.GNU_FORMAT) as outer:
        for s in range(synsets):
            wnid = f"n{10_000_000 + s:08d}"
            inner = tar_bytes([(f"{wnid}_{i}.JPEG", b"notajpeg") for i in range(per_synset)])
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(inner)
            outer.addfile(info, io.BytesIO(inner))
    (root / "fall11_whole.tar.part").rename(root / "fall11_whole.tar")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds of this process: steadier than wall time on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(root: Path) -> dict:
    """In this (fresh) process: open, index and plan as a build does."""
    from data_prep.plan import write_plan
    from data_prep.sources import open_source

    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)  # index from scratch, as a first build does
    work.mkdir()
    t0, c0, base = time.time(), cpu_s(), peak_mb()
    src = open_source(root)
    images = 0
    for split in src.splits:
        plan = write_plan(src.records(split, work), split, work / f"plan-{split}.jsonl", 1024, 0, None)
        images += plan.listed
    seconds, cpu, peak = time.time() - t0, cpu_s() - c0, peak_mb()
    tracemalloc.start()
    held = list(src.records("train", work))  # the old way: every record in one list
    per_image = tracemalloc.get_traced_memory()[0] / len(held)
    return {"images": images, "seconds": seconds, "cpu_s": cpu, "base_mb": base, "peak_mb": peak,
            "list_bytes_per_image": per_image}


def main(argv: list[str]) -> None:
    if argv[0] == "--measure":
        print(json.dumps(measure(Path(argv[1]))))
        return
    work = Path(argv[0])
    print("| synsets | images | list + plan: wall s | CPU s | CPU us/image | peak RSS MB | "
          "a record list, bytes/image |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in argv[1:]:
        synsets, per = map(int, size.split("x"))
        root = work / size
        write_source(root, synsets, per)
        out = subprocess.run([sys.executable, __file__, "--measure", str(root)], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out)
        print(f"| {synsets} | {r['images']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['cpu_s'] / r['images'] * 1e6:.1f} | "
              f"{r['peak_mb']:.0f} | {r['list_bytes_per_image']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
