"""Stop signals: how a trainer outlives SLURM's preemption and time-limit warnings, and
Ctrl-C.

SLURM sends SIGUSR1 (`--signal=B:USR1@N`) or SIGTERM (preemption, scancel) to every
process of a job step; a terminal sends SIGINT (Ctrl-C) to every process of the
foreground group. The trainer notes it (`StopFlag`, installed before anything slow, so
that the first instant of a run is covered too), writes a checkpoint at the next step
or validation batch and exits with EXIT_PREEMPTED (EXIT_INTERRUPTED after Ctrl-C); the
same command resumes exactly. Its loader workers must not die of the same signal first
(that would end the trainer without a checkpoint), so they start with the signals
blocked and then ignore them, unless the SIGTERM comes from their parent (how the
DataLoader and Python's exit end them). Once the run has finished, a late warning is
ignored.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from repro.exits import EXIT_INTERRUPTED, EXIT_PREEMPTED

STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT}


class StopFlag:
    """Set by SIGUSR1/SIGTERM/SIGINT; read by the training loop at each step and each
    validation batch. Installing it replaces the signals' handlers until close()."""

    def __init__(self):
        self.signum: int | None = None       # the first stop signal received
        self.install()

    def install(self) -> None:
        """(Again:) the flag takes the stop signals, e.g. for the next of several runs in
        one process, after the last one finished and ignored late ones."""
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self.__dict__.setdefault("_previous", previous)     # what close() gives Ctrl-C back to

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    @property
    def raised(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED

    def close(self) -> None:
        """Give Ctrl-C back to its previous handler (SIGUSR1/SIGTERM: see ignore_late_signals)."""
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])


def ignore_late_signals() -> None:
    """For a command whose run has finished: a late time-limit warning must not kill the
    exiting process (Python drops its handlers during shutdown, and SIGUSR1's default
    action is to terminate). Only the commands call it, as they exit: an ignored signal
    is inherited by every process started after it (a library caller's pool workers
    would outlive Pool.terminate)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_blocked():
    """Processes started inside inherit a mask with the stop signals blocked, so that one
    arriving while a loader worker starts waits for `worker_outlives_stop_signals`
    instead of killing it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_outlives_stop_signals(worker_id: int) -> None:
    """A DataLoader worker_init_fn: ignore SIGUSR1 and Ctrl-C, and SIGTERM from anyone but
    the parent (the DataLoader and Python's exit stop workers with SIGTERM: those still end it)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # SIGTERM: taken by the thread below

    def watch() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="stop-signals").start()
