"""Exit statuses of `repro`, `python -m repro.cifar`, `python -m repro.d2l` and
`python -m data_prep.*`, one convention for all: the table is in README.md, "Exit
statuses". Each status is named where it arises: EXIT_BAD_INPUT (2) here,
train.EXIT_NONFINITE (3), checkpoint.EXIT_NO_SPACE (74), preempt.EXIT_PREEMPTED (75)
and preempt.EXIT_INTERRUPTED (130); build_shards returns 130 and 143 (128 + SIGTERM).
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2


class Refused(SystemExit):
    """Bad input found while setting up (the message says what, and what to do instead).
    The CLI prints it as one line and exits EXIT_BAD_INPUT; it is a SystemExit so that a
    script calling repro.train.train() stops with the message rather than going on."""
