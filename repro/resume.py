"""Where a run is, and the rule for continuing it: a run dir's newest usable checkpoint
is loaded into the task's model, optimizer and schedule, after checking that it belongs
to this run (the same settings: repro.config.resume_changes) and to this data (the
task's check_resume). If only the data stream's settings changed (world size, loader
workers), the epoch in progress starts again."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from repro import checkpoint
from repro.config import resume_changes
from repro.exits import Refused


@dataclass
class Position:
    """Where a run is: what a checkpoint records and resume() restores."""
    epoch: int = 0                   # epochs done
    step: int = 0                    # steps done in `epoch`
    global_step: int = 0
    best_top1_err: float = math.inf
    val_pending: bool = False        # `epoch`'s steps are all done, its validation is not

    def where(self) -> str:
        return f"epoch {self.epoch + 1} step {self.step}" + (
            " (validation pending)" if self.val_pending else "")


def resume(run) -> tuple[Path | None, bool]:
    """Load run.run_dir's newest usable checkpoint into run.task and run.pos. Returns its
    path (None for a new run) and whether the epoch starts again because the data
    stream's settings changed."""
    task = run.task
    ckpt_path, state = checkpoint.load_latest(run.run_dir, map_location=run.device)
    if ckpt_path is None:
        return None, False
    if run.dist.is_main:
        checkpoint.check_best(run.run_dir / "checkpoints")
    changes = resume_changes(state["config"], task.cfg.to_dict())
    if changes:
        raise Refused(f"{ckpt_path} belongs to a run with other settings "
                      f"({'; '.join(changes)}); a resumed run keeps its settings: drop "
                      f"the overrides, or start a new run with another --out")
    task.check_resume(state, ckpt_path)
    task.placed.model.load_state_dict(state["model"])
    task.placed.load_optimizer_state(task.optimizer, state["optimizer"])
    task.schedule.load_state_dict(state["schedule"])
    run.pos = Position(state["epoch"], state["step"], state["global_step"],
                       state["best_top1_err"], state["val_pending"])
    # The order of a finished epoch's samples no longer matters.
    restart = state["stream"] != task.stream and run.pos.step > 0 and not run.pos.val_pending
    if restart:
        if run.dist.is_main:
            # The epoch's order depends on these; its rest cannot be picked out of a new order.
            print(f"warning: the data stream's settings changed ({state['stream']} -> "
                  f"{task.stream}): epoch {run.pos.epoch + 1} starts again, so the images of "
                  f"its first {run.pos.step} steps are trained on twice", file=sys.stderr)
        run.pos.step = 0
    return ckpt_path, restart
