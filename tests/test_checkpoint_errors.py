"""Damaged checkpoints and missing inputs: one-line errors naming the file (repro eval,
repro train), resuming from the newest checkpoint that loads (checkpoint.load_latest), and
the temp files of a checkpoint write killed mid-way. Real torch.save'd files, really damaged."""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro import checkpoint
from repro.checkpoint import CheckpointError, load_latest
from repro.cli import main
from repro.config import load_config, model_kwargs
from repro.exits import EXIT_NO_SPACE
from repro.model import build_model
from run_helpers import ROOT, SMALL_RUN, SMOKE, TRAINED_SHARDS, tmpfs
from shard_helpers import other_stats

# `trained` (conftest) is one epoch of train(shards, run) on these shards.
SHARDS = TRAINED_SHARDS
SMALL = [*SMALL_RUN, "data.workers=1"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real eval checkpoint: the smoke config's model and its config."""
    cfg = load_config(SMOKE, SMALL)
    path = tmp_path_factory.mktemp("good") / "good.pt"
    torch.save({"model": build_model(model_kwargs(cfg)).state_dict(), "config": cfg.to_dict(),
                "format_version": checkpoint.FORMAT_VERSION}, path)
    return path


def damage(good: Path, bad: Path, how: str) -> None:
    data = good.read_bytes()
    if how == "truncated":                    # a copy cut short (disk full, killed transfer)
        bad.write_bytes(data[: len(data) // 2])
    elif how == "header overwritten":
        bad.write_bytes(b"\0" * 64 + data[64:])
    elif how == "random bytes":
        bad.write_bytes(random.Random(0).randbytes(4096))
    elif how == "empty":
        bad.write_bytes(b"")
    elif how == "tensor only":
        torch.save(torch.zeros(3), bad)
    elif how == "no config":
        torch.save({"model": torch.load(good, weights_only=False)["model"]}, bad)
    elif how in ("no format version", "another format version"):
        state = torch.load(good, weights_only=False)
        if how == "no format version":
            del state["format_version"]
        else:
            state["format_version"] = checkpoint.FORMAT_VERSION + 1
        torch.save(state, bad)


@pytest.mark.parametrize("how, says", [
    ("truncated", "not a readable checkpoint of this project (RuntimeError: PytorchStreamReader"),
    ("header overwritten", "not a readable checkpoint of this project (UnpicklingError"),
    ("random bytes", "not a readable checkpoint of this project ("),
    ("empty", "not a readable checkpoint of this project (EOFError"),
    ("tensor only", "not a checkpoint of this project (it holds a Tensor, not a dict"),
    ("no config", "not a checkpoint of this project: no config entry (has model)"),
    ("no format version", f"checkpoint format_version None, this code reads "
                          f"{checkpoint.FORMAT_VERSION}: written by another version"),
    ("another format version", f"checkpoint format_version {checkpoint.FORMAT_VERSION + 1}, "
                               f"this code reads {checkpoint.FORMAT_VERSION}"),
])
def test_eval_refuses_a_damaged_checkpoint_in_one_line(shards, good, tmp_path, capsys, how, says):
    bad = tmp_path / "bad.pt"
    damage(good, bad, how)
    assert main(["eval", "--checkpoint", str(good), "--checkpoint", str(bad),
                 "--data", str(shards)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: {says}") and err.count("\n") == 1, err


# ---- load_latest ------------------------------------------------------------------------
def save_steps(run: Path, steps=(1, 2, 3), keep_last=3) -> Path:
    """Training checkpoints as `repro train` writes them (checkpoint.save, hard links)."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for s in steps:
        model(torch.ones(1, 4)).sum().backward()
        optimizer.step()
        checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": {"lr": 0.1}, "epoch": 0, "step": s, "global_step": s},
                        run / "checkpoints", keep_last, is_best=s == 1)
    return run / "checkpoints"


def test_load_latest_intact_and_absent(tmp_path, capsys):
    assert load_latest(tmp_path / "new") == (None, None)
    (tmp_path / "new" / "checkpoints").mkdir(parents=True)
    (tmp_path / "new" / "checkpoints" / "last.pt.tmp-host-1").write_bytes(b"half")
    assert load_latest(tmp_path / "new") == (None, None)      # a temp file is no checkpoint
    ckpts = save_steps(tmp_path / "run")
    path, state = load_latest(tmp_path / "run")
    assert path == ckpts / "last.pt" and state["global_step"] == 3
    assert capsys.readouterr().err == ""


def test_load_latest_skips_a_truncated_last_pt_and_its_hard_linked_step(tmp_path, capsys):
    ckpts = save_steps(tmp_path)
    assert os.path.samefile(ckpts / "last.pt", ckpts / "step-000000003.pt")
    os.truncate(ckpts / "last.pt", 1000)      # in place: step-3 is the same file
    path, state = load_latest(tmp_path)
    assert path == ckpts / "step-000000002.pt" and state["global_step"] == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    for line, name in zip(err, ("last.pt", "step-000000003.pt")):
        assert line.startswith(f"warning: skipping {ckpts / name}: not a readable checkpoint")


def test_load_latest_falls_back_to_the_step_beside_a_replaced_last_pt(tmp_path, capsys):
    ckpts = save_steps(tmp_path)
    (ckpts / "last.pt").unlink()
    (ckpts / "last.pt").write_bytes(b"\0" * 64 + (ckpts / "step-000000003.pt").read_bytes()[64:])
    path, state = load_latest(tmp_path)
    assert path == ckpts / "step-000000003.pt" and state["step"] == 3
    assert capsys.readouterr().err.startswith(f"warning: skipping {ckpts / 'last.pt'}: not a "
                                              "readable checkpoint of this project (Unpickling")


def test_load_latest_skips_a_checkpoint_without_the_training_state(tmp_path, capsys):
    ckpts = save_steps(tmp_path, steps=(1,))
    (ckpts / "last.pt").unlink()
    torch.save({"model": {}, "config": {}}, ckpts / "last.pt")    # e.g. an eval-only export
    path, _ = load_latest(tmp_path)
    assert path == ckpts / "step-000000001.pt"
    assert (f"skipping {ckpts / 'last.pt'}: not a checkpoint of this project: no optimizer, "
            "schedule, epoch, step, global_step entries") in capsys.readouterr().err


def test_bytes_changed_inside_the_weights_are_caught_by_the_digest(tmp_path, capsys):
    """torch.load reads such a file without complaint (its zip records carry no checked
    checksum); the .sha256 written beside it at save time catches it."""
    ckpts = save_steps(tmp_path, steps=(1, 2), keep_last=2)
    weights = next(iter(checkpoint.load(ckpts / "step-000000002.pt")["model"].values()))
    weights = weights.numpy().tobytes()
    data = (ckpts / "step-000000002.pt").read_bytes()   # last.pt is a link to it
    at = data.index(weights)
    (ckpts / "step-000000002.pt").write_bytes(data[:at] + bytes(4) + data[at + 4:])
    assert torch.load(ckpts / "last.pt", weights_only=False)["step"] == 2   # still "loads"
    with pytest.raises(CheckpointError, match=r"last\.pt: its bytes do not match last\.pt\.sha256") as e:
        checkpoint.load(ckpts / "last.pt")
    assert "delete" not in str(e.value)          # a digest file is never the thing to remove
    path, state = load_latest(tmp_path)
    assert path == ckpts / "step-000000001.pt" and state["step"] == 1
    assert "do not match" in capsys.readouterr().err


def test_pruned_checkpoints_take_their_digests_with_them(tmp_path):
    ckpts = save_steps(tmp_path, steps=(1, 2, 3), keep_last=2)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256", "step-000000002.pt",
        "step-000000002.pt.sha256", "step-000000003.pt", "step-000000003.pt.sha256"]


def test_load_latest_refuses_to_start_over_when_nothing_loads(tmp_path, capsys):
    ckpts = save_steps(tmp_path, steps=(1, 2), keep_last=2)
    for p in ckpts.glob("step-*.pt"):          # last.pt and best.pt are links to these
        p.write_bytes(b"\0" * 64 + p.read_bytes()[64:])
    with pytest.raises(CheckpointError) as e:
        load_latest(tmp_path)
    for name in ("last.pt", "step-000000002.pt", "step-000000001.pt"):
        assert f"{ckpts / name}: not a readable checkpoint" in str(e.value)
    assert str(e.value).startswith(f"{ckpts}: no checkpoint to resume from")
    assert capsys.readouterr().err.count("warning: skipping") == 3
    for p in ckpts.glob("*.pt"):
        if p.name != "best.pt":
            p.unlink()
    with pytest.raises(CheckpointError, match=r"best.pt: no last.pt or step-\*.pt"):
        load_latest(tmp_path)


# ---- reading while the trainer saves -----------------------------------------------------
SAVING = """
import sys, time, torch
from pathlib import Path
from repro import checkpoint

end, step = time.time() + float(sys.argv[2]), 1
while time.time() < end:
    checkpoint.save({"global_step": step, "model": torch.full((20000,), float(step))},
                    Path(sys.argv[1]), 2, is_best=step % 2 == 1)
    step += 1
"""


def test_reading_while_the_trainer_saves_never_reports_damage(tmp_path):
    """`repro eval` of last.pt/best.pt on a live run: each file and its digest are replaced
    by two renames, and a read between them must not take the pair for damage."""
    ckpts = tmp_path / "checkpoints"
    checkpoint.save({"global_step": 0, "model": torch.zeros(20000)}, ckpts, 2, is_best=True)
    saver = subprocess.Popen([sys.executable, "-c", SAVING, str(ckpts), "3"], cwd=ROOT)
    loads, errors = 0, []
    while saver.poll() is None:
        for name in ("last.pt", "best.pt"):
            try:
                state = checkpoint.load(ckpts / name)
                assert torch.equal(state["model"], torch.full((20000,), float(state["global_step"])))
            except CheckpointError as e:
                errors.append(str(e))
            loads += 1
    assert saver.returncode == 0 and loads > 100
    assert errors == [], f"{len(errors)} of {loads} loads: {errors[0]}"


# ---- best.pt: repaired on resume, passed over by report and figures -----------------------
KILLED_BETWEEN_RENAMES = """
import os, signal, sys, torch
from pathlib import Path
from repro import checkpoint

ckpts, after_link = Path(sys.argv[1]), sys.argv[2] == "after"
checkpoint.save({"global_step": 1, "model": torch.zeros(100)}, ckpts, 2, is_best=True)
link = checkpoint._link_or_copy

def link_and_die(src, dst):
    if dst.name == "best.pt" and not after_link:
        os.kill(os.getpid(), signal.SIGKILL)
    link(src, dst)
    if dst.name == "best.pt":
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint._link_or_copy = link_and_die
checkpoint.save({"global_step": 2, "model": torch.ones(100)}, ckpts, 2, is_best=True)
"""


@pytest.mark.parametrize("when, best_step", [("before", 1), ("after", 2)])
def test_a_save_killed_around_best_pt_leaves_a_pair_that_loads(tmp_path, capsys, when,
                                                              best_step):
    """Killed after best.pt's digest file lists the old and the new digest, before or after
    best.pt is linked: whichever file best.pt holds, its digest is listed."""
    ckpts = tmp_path / "checkpoints"
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(ckpts), when],
                            cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert len((ckpts / "best.pt.sha256").read_text().splitlines()) == 2
    assert checkpoint.load(ckpts / "best.pt")["global_step"] == best_step
    checkpoint.check_best(ckpts)                 # what a resume does: nothing to say
    assert capsys.readouterr().err == ""


def test_figures_pass_over_a_damaged_best_pt_for_last_pt(shards, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    best = run / "checkpoints" / "best.pt"
    data = bytearray(best.read_bytes())
    best.unlink()                                  # its own file: last.pt stays intact
    data[-30000] ^= 0xFF                           # inside the weights: torch.load still reads it
    best.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(train(shards, run)) == 0           # no checkpoint of this run has these bytes
    assert f"warning: {best}: its bytes do not match best.pt.sha256" in capsys.readouterr().err
    assert main(["figures", str(run), "--device", "cpu", "--queries", "1", "--scan", "4"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {best}: its bytes do not match best.pt.sha256: damaged after it was " \
           f"written; use another checkpoint" in err and f"using {best.parent / 'last.pt'}" in err
    assert "delete" not in err and (run / "figures" / "filters.png").is_file()


# ---- the shards' statistics: checked against the manifest, and against the checkpoint's ----
def test_train_and_eval_refuse_a_stats_npz_the_build_did_not_write(shards, trained, tmp_path,
                                                                    capsys):
    replaced = other_stats(shards, tmp_path / "replaced", in_manifest=False)
    says = (f"error: {replaced / 'stats.npz'}: not the file the build wrote (its sha256 differs "
            f"from manifest.json's); run build_shards with the same arguments again: it "
            f"rebuilds it\n")
    assert main(train(replaced, tmp_path / "run")) == 2
    assert capsys.readouterr().err == says
    assert main(["eval", "--checkpoint", str(trained / "checkpoints" / "last.pt"),
                 "--data", str(replaced)]) == 2
    assert capsys.readouterr().err == says


def test_eval_warns_of_a_checkpoint_trained_with_other_stats(shards, trained, tmp_path, capsys):
    other = other_stats(shards, tmp_path / "other")
    last = trained / "checkpoints" / "last.pt"
    assert main(["eval", "--checkpoint", str(last), "--data", str(other), "--device", "cpu"]) == 0
    assert (f"warning: {last} was trained with another stats.npz than {other / 'stats.npz'}: "
            f"its input is normalised with another mean image") in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(last), "--data", str(shards), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


# ---- temp files of a killed checkpoint write ----------------------------------------------
KILLED_MID_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from repro import checkpoint

class KilledWhilePickled:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.save({"global_step": 8, "model": torch.zeros(1000), "x": KilledWhilePickled()},
                Path(sys.argv[1]), 2, False)
"""


def test_save_removes_the_temp_files_of_killed_writes_only(tmp_path):
    ckpts = tmp_path / "checkpoints"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, str(ckpts)], cwd=ROOT)
    assert killed.wait() == -signal.SIGKILL
    (left,) = ckpts.iterdir()
    assert left.name == f"step-000000008.pt.tmp-{socket.gethostname()}-{killed.pid}"
    writer = subprocess.Popen(["sleep", "60"])          # a live process on this host
    try:
        live = ckpts / f"step-000000009.pt.tmp-{socket.gethostname()}-{writer.pid}"
        live.write_bytes(b"being written")
        checkpoint.save({"global_step": 10}, ckpts, keep_last=2, is_best=False)
        assert sorted(p.name for p in ckpts.iterdir()) == [
            "last.pt", "last.pt.sha256", live.name, "step-000000010.pt",
            "step-000000010.pt.sha256"]
    finally:
        writer.kill()
        writer.wait()


# ---- repro train: one-line errors, the preemption status unchanged -------------------------
def train(shards, run, *overrides) -> list[str]:
    return ["train", "--config", str(SMOKE), "--data", str(shards), "--out", str(run),
            *SMALL, "schedule.epochs=1", *overrides]



@pytest.fixture
def small_disk(tmp_path):
    """A 240 MB tmpfs: room for one checkpoint of these tests' model (161 MB), not for two."""
    with tmpfs(tmp_path / "disk", "240m") as disk:
        yield disk


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(shards, small_disk, capsys):
    run = small_disk / "run"
    assert main(train(shards, run, "schedule.epochs=2")) == EXIT_NO_SPACE == 74
    err = capsys.readouterr().err
    ckpts = run / "checkpoints"
    assert err.splitlines()[-1] == (f"error: no space left on device while writing "
                                    f"{ckpts / 'step-000000006.pt'}; the previous checkpoint is kept")
    assert "Traceback" not in err
    assert checkpoint.load(ckpts / "last.pt")["global_step"] == 3       # epoch 1's, intact
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "best.pt", "best.pt.sha256", "last.pt", "last.pt.sha256", "step-000000003.pt",
        "step-000000003.pt.sha256"]

def test_train_reports_missing_inputs_in_one_line(shards, good, tmp_path, capsys):
    assert main(train(tmp_path / "nowhere", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'nowhere' / 'manifest.json'}: no manifest.json")
    assert err.count("\n") == 1
    no_stats = tmp_path / "no_stats"
    shutil.copytree(shards, no_stats)
    (no_stats / "stats.npz").unlink()
    assert main(train(no_stats, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(no_stats / "stats.npz") in err
    assert err.count("\n") == 1
    # A run whose only checkpoint is damaged is refused, not started over.
    run = tmp_path / "damaged"
    (run / "checkpoints").mkdir(parents=True)
    damage(good, run / "checkpoints" / "last.pt", "truncated")
    assert main(train(shards, run)) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints' / 'last.pt'}: not a readable checkpoint" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")


def test_train_sigterm_still_checkpoints_and_exits_75(shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "repro.cli", *train(shards, run, "schedule.epochs=2")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1 step 1/"):
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait() == 75, out
    assert "stop requested: checkpoint written" in out
    assert checkpoint.load(run / "checkpoints" / "last.pt", keys=checkpoint.TRAIN_KEYS)
