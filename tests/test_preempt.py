"""repro.preempt: the stop flag, the signals' handlers before and after a run, and the loader
workers' survival of a job step's SIGTERM (StopSafeDataLoader's use of it is in
test_data_loader.py, the trainer's in test_train.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.exits import EXIT_INTERRUPTED, EXIT_PREEMPTED
from repro.preempt import STOP_SIGNALS, StopFlag, ignore_late_signals, stop_signals_blocked

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def handlers_restored():
    """Each test leaves pytest's own handlers as it found them."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def deliver(sig: int) -> None:
    """A signal to this process, handled before this returns (Python runs handlers between
    bytecodes of the main thread)."""
    os.kill(os.getpid(), sig)
    time.sleep(0.01)


@pytest.mark.parametrize("first, status", [(signal.SIGUSR1, EXIT_PREEMPTED),
                                           (signal.SIGTERM, EXIT_PREEMPTED),
                                           (signal.SIGINT, EXIT_INTERRUPTED)])
def test_the_first_stop_signal_is_kept_and_names_the_exit_status(first, status):
    flag = StopFlag()
    assert not flag.raised
    deliver(first)
    later = signal.SIGINT if first != signal.SIGINT else signal.SIGUSR1
    deliver(later)                                  # a second signal changes nothing
    assert flag.raised and flag.signum == first and flag.exit_status == status


def test_close_gives_ctrl_c_back_and_install_rearms():
    signal.signal(signal.SIGINT, signal.default_int_handler)      # Python's own, as in a command
    flag = StopFlag()
    flag.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        deliver(signal.SIGINT)
    assert not flag.raised
    deliver(signal.SIGUSR1)                         # still the flag's until the run ignores it
    assert flag.signum == signal.SIGUSR1
    ignore_late_signals()
    deliver(signal.SIGUSR1)                         # would terminate the process if not ignored
    deliver(signal.SIGTERM)
    flag.signum = None
    flag.install()                                  # the next run in the same process
    deliver(signal.SIGTERM)
    assert flag.signum == signal.SIGTERM
    flag.close()                                    # back to Python's, not the flag's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def blocked(status: str) -> set[int]:
    """The signals blocked in /proc/PID/status's text."""
    line = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    mask = int(line.split()[1], 16)
    return {s for s in range(1, 65) if mask >> (s - 1) & 1}


def test_processes_started_with_the_stop_signals_blocked_inherit_the_mask_and_the_caller_not():
    read_mask = ["cat", "/proc/self/status"]
    with stop_signals_blocked():
        inside = blocked(subprocess.run(read_mask, capture_output=True, text=True).stdout)
    after = blocked(subprocess.run(read_mask, capture_output=True, text=True).stdout)
    assert {int(s) for s in STOP_SIGNALS} <= inside
    assert not {int(s) for s in STOP_SIGNALS} & after
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


WORKER = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from repro.preempt import worker_outlives_stop_signals
worker_outlives_stop_signals(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_worker_outlives_the_stop_signals_of_others_and_ends_on_its_parents_sigterm():
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "ready\n"
        worker.send_signal(signal.SIGUSR1)          # SLURM's warning, from the parent too
        worker.send_signal(signal.SIGINT)           # Ctrl-C to the foreground group
        subprocess.run(["kill", "-s", "TERM", str(worker.pid)], check=True)   # not the parent
        time.sleep(0.5)
        assert worker.poll() is None, "a stop signal from another process ended the worker"
        worker.send_signal(signal.SIGTERM)          # the DataLoader's shutdown, from its parent
        assert worker.wait(timeout=10) == 0
    finally:
        worker.kill()
        worker.wait()

