"""Exit statuses of `repro` and `python -m data_prep.*`, one convention for all (the table
in README.md, "Exit statuses"):

    0    done (also: a finished run asked to train again)
    1    verify found problems in the shards; or an unforeseen error (a bug: traceback)
    2    bad input, refused before any work: a missing or wrong file or directory, a bad
         config value, a resume with other settings or shards; one line on stderr says
         what and where
    3    repro train: the loss or the weights became non-finite (train.EXIT_NONFINITE);
         the last good checkpoint is kept
    74   repro train: the disk filled up while a checkpoint was written
         (checkpoint.EXIT_NO_SPACE, EX_IOERR); the previous checkpoint is kept
    75   repro train stopped by SIGUSR1/SIGTERM after writing a checkpoint
         (preempt.EXIT_PREEMPTED, EX_TEMPFAIL: requeue, rerun the same command)
    130  interrupted (Ctrl-C); build_shards: 143 on SIGTERM, finished shards kept
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2


class Refused(SystemExit):
    """Bad input found while setting up (the message says what, and what to do instead).
    The CLI prints it as one line and exits EXIT_BAD_INPUT; it is a SystemExit so that a
    script calling repro.train.train() stops with the message rather than going on."""
