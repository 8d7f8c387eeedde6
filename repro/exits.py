"""Exit statuses of `repro`, `python -m repro.cifar`, `python -m repro.d2l` and
`python -m data_prep.*`, one convention for all (the table in README.md, "Exit
statuses"), and the one exception type that carries them.

Import-light (no torch): data_prep uses it too.
"""
from __future__ import annotations

import functools
import re
import sys

EXIT_DONE = 0          # also: a finished run asked to train again
EXIT_PROBLEMS = 1      # verify found problems in the shards; an unforeseen error (a bug: traceback)
EXIT_BAD_INPUT = 2     # refused before any work: a missing or wrong file, a bad config value,
                       # a resume with other settings or shards; one line on stderr
EXIT_NONFINITE = 3     # repro train: the loss or weights became non-finite (last good
                       # checkpoint kept)
EXIT_NO_SPACE = 74     # EX_IOERR: the disk filled up under a checkpoint, figures, a report or
                       # eval --out; a requeue would not help
EXIT_PREEMPTED = 75    # EX_TEMPFAIL: stopped by SIGUSR1/SIGTERM after a checkpoint; run it again
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C (what a shell reports for a Ctrl-C'd command)
EXIT_TERMINATED = 143  # 128 + SIGTERM: build_shards stopped, finished shards kept


class ReproError(Exception):
    """A problem the user can fix, said in one line (the message names the file or setting
    and what to do); `exit_status` is the command's status."""
    exit_status = EXIT_BAD_INPUT


class Refused(ReproError):
    """Bad input found while setting up (the message says what, and what to do instead)."""


def error_line(e: Exception) -> str:
    """The message; for one re-raised from a DataLoader worker ("Caught X in DataLoader
    worker process N. Original Traceback ..."), the original exception's own message."""
    text = str(e)
    if not text.startswith("Caught "):
        return text
    return re.sub(r"^[\w.]+: ", "", text.strip().splitlines()[-1])


def entry_point(main):
    """Wraps a command's main(argv) -> status: a ReproError is `error: <message>` on stderr
    and its status, Ctrl-C is status 130; anything else stays a traceback (a bug)."""
    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except ReproError as e:
            print(f"error: {error_line(e)}", file=sys.stderr)
            return e.exit_status
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    return guarded
