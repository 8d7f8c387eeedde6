"""A stop signal that arrives at a chosen point of a run, for tests of exact resume: the
loop reads StopFlag.raised before each step's record, so the n-th read is the n-th step."""
import signal

from repro.preempt import StopFlag


class StopAfter(StopFlag):
    """Raised (as SIGTERM) from the `reads`-th time the loop asks on."""

    def __init__(self, reads: int):
        super().__init__()
        self.reads = reads

    @property
    def raised(self) -> bool:
        self.reads -= 1
        if self.reads <= 0 and self.signum is None:
            self.signum = signal.SIGTERM
        return self.signum is not None
