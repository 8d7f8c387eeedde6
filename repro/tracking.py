"""Run records: metrics.jsonl always (one JSON object per event), W&B when enabled.

W&B never fails a run: if it cannot start (no network, no key) the run goes on
with metrics.jsonl alone and says so. The W&B run id is kept in the run
directory, so a resumed or requeued job continues the same W&B run.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path


def warn(message: str, error: Exception) -> None:
    """One plain line on stderr, with the first line of `error` (W&B's run over many):
    warnings.warn would prefix the source location, which tells a user nothing."""
    why = (str(error).strip().splitlines() or [""])[0]
    print(f"warning: {message}: {type(error).__name__}: {why}", file=sys.stderr, flush=True)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_context() -> dict:
    return {"git_commit": git_commit(), "argv": sys.argv,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "host": os.uname().nodename}


class Tracker:
    def __init__(self, run_dir: Path, config: dict, mode: str, project: str, entity: str = ""):
        self.path = Path(run_dir) / "metrics.jsonl"
        cut_torn_tail(self.path)
        self.wandb = None
        context = run_context()
        self.log({"event": "start", **context})
        if mode == "disabled":
            return
        id_file = Path(run_dir) / "wandb_id.txt"
        try:
            import wandb
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=project, entity=entity or None, id=run_id,
                                    resume="allow", dir=str(run_dir), mode=mode,
                                    config=config | {"run": context},
                                    # not wandb's 90 s: a node without network waits at every requeue
                                    settings=wandb.Settings(init_timeout=30))
            self.wandb.summary["restart_count"] = context["restart_count"]
            self.log({"event": "wandb", "id": run_id, "mode": mode})
        except Exception as e:  # noqa: BLE001 - any failure here must not stop training
            warn("W&B logging disabled for this run (metrics.jsonl has every record)", e)
            self.log({"event": "wandb", "error": str(e)})
            self.wandb = None

    def log(self, record: dict, step: int | None = None) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None and record.get("event") in ("train", "val", "epoch"):
            metrics = {f"{record['event']}/{k}": v for k, v in record.items()
                       if isinstance(v, (int, float)) and k not in ("time",)}
            try:
                self.wandb.log(metrics, step=step)
            except Exception as e:  # noqa: BLE001
                warn("W&B log failed, continuing", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                warn("W&B finish failed", e)


def cut_torn_tail(path: Path) -> None:
    """Drop a last line left half-written by a kill, so that appending stays valid JSONL."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def run_data_dir(run_dir: Path) -> str | None:
    """The shard directory the run trained on (its latest start), if it still exists."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return None
    paths = [r["path"] for r in read_metrics(run_dir) if r.get("event") == "data"]
    return paths[-1] if paths and Path(paths[-1]).is_dir() else None


def best_val(records: list[dict]) -> dict | None:
    """The val record with the lowest top-1 error (None before the first validation)."""
    return min((r for r in records if r.get("event") == "val" and "top1_err" in r),
               key=lambda r: r["top1_err"],
               default=None)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl. A last line torn by a kill mid-write is ignored; a
    damaged line elsewhere (a disk error, an edit) is skipped and reported, once per
    file and process, with its number: the records are a log, and one bad line must
    not cost a report, or a training run that reads them."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text(errors="replace").splitlines()
    records, damaged = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
            if number < len(lines):         # the last: torn by a kill, no news
                damaged.append(number)
        if isinstance(record, dict):
            records.append(record)
        elif record is not None and number not in damaged:
            damaged.append(number)
    if damaged and path not in _REPORTED:
        _REPORTED.add(path)
        print(f"warning: {path}: line{'s' * (len(damaged) > 1)} "
              f"{', '.join(map(str, damaged[:5]))}{' ...' if len(damaged) > 5 else ''} "
              f"{'are' if len(damaged) > 1 else 'is'} not a JSON record; skipped", file=sys.stderr)
    return records


_REPORTED: set[Path] = set()       # metrics files whose damage was reported
