"""Learning-rate schedules, stepped once per epoch with the validation error.

The paper: "divide the learning rate by 10 when the validation error rate
stopped improving with the current learning rate ... reduced three times
prior to termination" (section 5). `plateau` is that rule made precise by
`patience` and `threshold` (PAPER_NOTES: "when is a plateau"); `steps` is a
fixed-epoch alternative for predictable runs; `constant` never changes lr.
"""
from __future__ import annotations

from repro.config import ScheduleConfig


class Schedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float):
        self.cfg = cfg
        self.lr = base_lr
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    def step(self, epoch: int, val_err: float) -> float:
        """Record epoch `epoch`'s (0-based, just finished) val error; return the lr for the next."""
        cfg = self.cfg
        if cfg.kind == "plateau":
            if val_err < self.best - cfg.threshold:
                self.best, self.bad_epochs = val_err, 0
            else:
                self.bad_epochs += 1
            if self.bad_epochs >= cfg.patience and self.drops < cfg.max_drops:
                self._drop()
        elif cfg.kind == "steps":
            self.best = min(self.best, val_err)
            if epoch + 1 in cfg.milestones:
                self._drop()
        return self.lr

    def apply(self, optimizer) -> None:
        """Every parameter group at the current lr (at each epoch's start)."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def _drop(self) -> None:
        self.lr *= self.cfg.factor
        self.drops += 1
        self.bad_epochs = 0  # the new lr gets `patience` epochs of its own

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best = state["lr"], state["best"]
        self.bad_epochs, self.drops = state["bad_epochs"], state["drops"]
