"""Progress of a long loop where the user is: a tqdm bar on a terminal; elsewhere (a Slurm
job's log, a pipe, nohup) a plain line now and then with the count, the rate and the ETA,
so that a log shows the job alive and how long it has left. One helper for every long
loop outside training (build_shards, verify, eval, report, figures)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from . import interactive

MODES = ("auto", "bar", "lines", "off")


def duration(seconds: float) -> str:
    """3h05m, 4m09s, 12s: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def resolve(mode: str) -> str:
    """auto: a bar on a terminal, lines elsewhere (and under Slurm, whose logs are files)."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    return ("bar" if interactive() else "lines") if mode == "auto" else mode


class Progress:
    """Count work done with update(n); close() at the end (or use it as a context manager).
    In lines mode a line goes to stderr at every `every_pct` percent and at least every
    `every_s` seconds, never two within `min_gap_s` (a quick loop prints only its last
    line), and close() prints the total time and rate."""

    def __init__(self, total: int, desc: str, unit: str = "it", mode: str = "auto",
                 every_pct: float = 10, every_s: float = 60, min_gap_s: float = 1.0):
        self.mode, self.total, self.desc, self.unit = resolve(mode), total, desc, unit
        self.every_pct, self.every_s, self.min_gap_s = every_pct, every_s, min_gap_s
        self.n, self.next_pct = 0, every_pct
        self.start = self.last = time.monotonic()
        self.bar = (tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05)
                    if self.mode == "bar" else None)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        if self.mode != "lines" or self.n >= self.total:
            return
        now = time.monotonic()
        pct = 100 * self.n / self.total
        since = now - self.last
        if since >= self.every_s or (pct >= self.next_pct and since >= self.min_gap_s):
            self.last, self.next_pct = now, (pct // self.every_pct + 1) * self.every_pct
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        rate = self.n / max(now - self.start, 1e-9)
        eta = duration((self.total - self.n) / rate) if rate > 0 else "?"
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} "
                f"({100 * self.n / max(self.total, 1):.0f}%), {rate:.1f} {self.unit}/s, ETA {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.n:
            seconds = time.monotonic() - self.start
            print(f"{self.desc}: {self.n} {self.unit} in {duration(seconds)} "
                  f"({self.n / max(seconds, 1e-9):.1f} {self.unit}/s)", file=sys.stderr, flush=True)
        self.mode = "off"          # closed: a second close() prints nothing

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:  # an error: its message is the last line, not a summary
            self.bar.close()
