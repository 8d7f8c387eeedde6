"""data_prep.tarindex.index_tar against tarfile's own member offsets (getmembers +
offset_data) on a 1,000-member tar of 20-200 kB members, GNU and pax headers: best of 5
each, the page cache warm (BENCHMARKS.md). Run from the checkout: python tools/tarindex_bench.py"""
import io
import random
import tarfile
import tempfile
import timeit
from pathlib import Path

from data_prep.tarindex import index_tar


def best_ms(fn) -> float:
    return 1e3 * min(timeit.repeat(fn, number=1, repeat=5))


def main() -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt in (("GNU", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT)):
            path = str(Path(tmp) / f"{name}.tar")
            with tarfile.open(path, "w", format=fmt) as t:
                for i in range(1000):
                    data = rng.randbytes(rng.randint(20_000, 200_000))   # ImageNet JPEG sizes
                    info = tarfile.TarInfo(f"n01440764_{i:05d}.JPEG")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
            ours = best_ms(lambda: index_tar(path))
            theirs = best_ms(lambda: [m.offset_data for m in tarfile.open(path).getmembers()])
            print(f"{name}: index_tar {ours:.1f} ms, tarfile {theirs:.1f} ms ({theirs / ours:.2f}x)")


if __name__ == "__main__":
    main()
