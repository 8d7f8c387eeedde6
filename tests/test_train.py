"""The trainer end to end on tiny shards (CPU). Images are cropped to 67 px here
(data.crop_size) so the full-width model runs fast; the architecture is unchanged."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from repro.checkpoint import atomic_save, load
from repro.config import load_config, model_kwargs
from repro.data.shards import split_shards
from repro.distributed import DistContext
from repro.model import build_model
from repro.tracking import read_metrics
from repro.placement import make_normalizer
from repro.exits import EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_PREEMPTED, Refused
from repro.imagenet import train, validate
from run_helpers import (ROOT, SMALL_RUN, SMOKE, assert_same_weights, centre_inputs,
                         final_weights)
from shard_helpers import other_stats, write_shards

EVERY_STEP = "checkpoint.every_minutes=1e-9"


def cli(shards, run, *overrides):
    return [sys.executable, "-m", "repro.cli", "train", "--config", str(SMOKE), "--data",
            str(shards), "--out", str(run), *SMALL_RUN, "data.workers=2", "schedule.epochs=2",
            *overrides]


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "full"
    subprocess.run(cli(shards, run), check=True, cwd=ROOT, capture_output=True)
    return run


def test_loss_falls_on_learnable_data(tmp_path):
    d = write_shards(tmp_path / "s", classes=4, train=128, val=32, shard_size=32)
    cfg = load_config(SMOKE, SMALL_RUN[:3] + ["model.init=torch", "optim.lr=0.005",
                                         "schedule.epochs=3", "train.log_every=4"])
    assert train(cfg, d, tmp_path / "run") == 0
    m = read_metrics(tmp_path / "run")
    losses = [r["loss"] for r in m if r["event"] == "train"]
    val = [r["top1_err"] for r in m if r["event"] == "val"]
    assert sum(losses[-2:]) / 2 < 0.6 * math.log(4), losses
    assert min(val) < 40, val               # chance is 75%


def test_kill_9_then_resume_is_bit_identical(shards, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(cli(shards, run, EVERY_STEP), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    ckpts = run / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpts.glob("step-00000000[4-9].pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load(ckpts / "last.pt")
    assert (state["epoch"], state["step"]) != (2, 0), "the kill came too late to test anything"
    subprocess.run(cli(shards, run), check=True, cwd=ROOT, capture_output=True)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    events = [r["event"] for r in read_metrics(run)]
    assert "resume" in events and events[-1] == "done"


@pytest.mark.parametrize("sig, to_group, status", [
    pytest.param(signal.SIGUSR1, False, EXIT_PREEMPTED, id="usr1-trainer"),
    pytest.param(signal.SIGTERM, True, EXIT_PREEMPTED, id="term-group"),
    pytest.param(signal.SIGINT, True, EXIT_INTERRUPTED, id="ctrl-c-group")])
def test_stop_signal_checkpoints_and_exits_with_documented_status(shards, uninterrupted, tmp_path,
                                                                  sig, to_group, status):
    """SIGUSR1 to the trainer (sbatch --signal=B:USR1), SIGTERM to every process of the
    step, its loader workers too (how SLURM preempts or cancels a job step), and Ctrl-C
    (SIGINT to the terminal's foreground group): a checkpoint, one line, no traceback."""
    run = tmp_path / "signalled"
    proc = subprocess.Popen(cli(shards, run), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:                 # wait until training is under way
        if line.startswith("epoch 1 step 2/"):
            break
    sent = time.time()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out = proc.stdout.read()
    assert proc.wait() == status, out
    assert time.time() - sent < 30
    assert "Traceback" not in out and re.search(
        rf"^(stop requested|interrupted): checkpoint written at epoch 1 step \d+"
        rf"( \(validation pending\))?; exiting with status {status} \(run the same command "
        rf"to resume\)$", out, re.M), out
    state = load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) < (2, 0)
    assert "preempted" in [r["event"] for r in read_metrics(run)]
    subprocess.run(cli(shards, run), check=True, cwd=ROOT, capture_output=True)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


def test_stop_during_validation_checkpoints_at_once_and_resumes_exactly(shards, uninterrupted,
                                                                         tmp_path):
    """A stop signal while the trainer validates: it checkpoints at once, the epoch trained
    and its validation pending (no waiting for the val pass, no second save), and exits 75
    within seconds; the resume validates that epoch first and ends on the same weights."""
    run = tmp_path / "run"
    proc = subprocess.Popen(cli(shards, run, "data.val_batch_size=2"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    for line in proc.stdout:        # the epoch's last step is logged, then validation starts
        out += line
        if re.match(r"epoch 1 step (\d+)/\1 ", line):
            break
    proc.send_signal(signal.SIGUSR1)
    sent = time.monotonic()
    out += proc.stdout.read()
    assert proc.wait() == EXIT_PREEMPTED, out
    seconds = time.monotonic() - sent
    print(f"signal during validation -> exit 75 in {seconds:.2f} s")
    state = load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"], state["val_pending"]) == (0, 3, True), out
    assert "epoch 1 val" not in out and "(validation pending); exiting with status 75" in out
    assert seconds < 10, out
    again = subprocess.run(cli(shards, run, "data.val_batch_size=2"), cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "at epoch 1 step 3 (validation pending)" in again
    assert again.index("epoch 1 val top-1") < again.index("epoch 2 step 1/")
    assert [r["epoch"] for r in read_metrics(run) if r["event"] == "val"] == [1, 2]
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


def test_stop_signal_in_the_first_instant_exits_75(shards, tmp_path):
    """SIGTERM while Python is still importing torch (the first seconds after launch):
    the handler is there already, so the trainer exits 75 ("run again"), not 143."""
    run = tmp_path / "run"
    proc = subprocess.Popen(cli(shards, run), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text():
        assert time.time() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_PREEMPTED, out
    assert "stop requested: before the first step, nothing to save; exiting with status 75" in out
    assert not (run / "checkpoints").exists()
    assert [r["event"] for r in read_metrics(run)][-1] == "preempted"


@pytest.mark.parametrize("override, named", [
    ("model.lrn=none", "model.lrn: 'paper' -> 'none'"),        # an ablation's architecture
    ("model.groups=1", "model.groups: 2 -> 1"),                # other parameter shapes
    ("optim.lr=0.05", "optim.lr: "),                           # the schedule carries the lr
    ("data.batch_size=8", "data.batch_size: "),
])
def test_resume_refuses_other_settings(shards, uninterrupted, tmp_path, override, named):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    before = (run / "config.yaml").read_text()
    cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=2", "schedule.epochs=2", override])
    with pytest.raises(Refused, match=f"belongs to a run with other settings .*{named}"):
        train(cfg, shards, run)
    assert (run / "config.yaml").read_text() == before


def test_resume_may_change_how_it_runs_and_how_long(shards, uninterrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=1", "schedule.epochs=3",
                                          "logging.progress=off"])
    assert train(cfg, shards, run) == 0
    assert load(run / "checkpoints" / "last.pt")["epoch"] == 3
    steps = [r for r in read_metrics(run) if r.get("event") == "train"]
    assert steps and not re.search(r"step \d+/\d+ loss", capsys.readouterr().out)  # logged only


def test_resume_refuses_shards_with_other_classes(shards, uninterrupted, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"] = [f"n{100 + i:08d}" for i in range(4)]    # as many, but others
    (other / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=2", "schedule.epochs=2"])
    with pytest.raises(Refused, match="lists other classes than the shards"):
        train(cfg, other, run)


def test_resume_refuses_shards_with_other_stats_unless_allowed(shards, uninterrupted, tmp_path,
                                                                capsys):
    """The same class list but another mean image: the checkpoint's fingerprint of its shards
    tells; `--allow-other-shards` goes on, saying so."""
    from repro.cli import main
    from repro.data.shards import data_fingerprint

    other = other_stats(shards, tmp_path / "other")
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert load(run / "checkpoints" / "last.pt")["data"] == {"data": "generated",
                                                             **data_fingerprint(shards)}
    cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=2", "schedule.epochs=2"])
    with pytest.raises(Refused, match=r"was trained on shards with another stats.npz \(mean "
                                         r"image and PCA\) and another manifest.json \(shard "
                                         r"set\) than .*other; resume on those shards, or pass "
                                         r"--allow-other-shards"):
        train(cfg, other, run)
    capsys.readouterr()
    assert main(["train", "--config", str(SMOKE), "--data", str(other), "--out", str(run),
                 "--allow-other-shards", *SMALL_RUN, "data.workers=2", "schedule.epochs=2"]) == 0
    assert f"going on with {other} (--allow-other-shards)" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path, capsys):
    run = tmp_path / "run"
    good = SMALL_RUN + ["schedule.epochs=1"]
    assert train(load_config(SMOKE, good), shards, run) == 0
    # Weights that are finite but overflow the forward pass of the next epoch's first step.
    state = load(run / "checkpoints" / "last.pt")
    state["model"]["fc6.weight"] *= 1e36
    atomic_save(state, run / "checkpoints" / "last.pt")
    before = final_weights(run)
    assert train(load_config(SMOKE, good + ["schedule.epochs=2"]), shards, run) == EXIT_NONFINITE
    assert_same_weights(final_weights(run), before)
    assert all(torch.isfinite(v).all() for v in before.values())
    assert read_metrics(run)[-1]["event"] == "nonfinite"
    assert f"the last good checkpoint is kept: {run / 'checkpoints' / 'last.pt'}" in \
        capsys.readouterr().err


def test_nonfinite_loss_before_any_checkpoint_says_there_is_none(shards, tmp_path, capsys):
    run = tmp_path / "run"
    # NaN at step 2 of 4
    cfg = load_config(SMOKE, SMALL_RUN + ["schedule.epochs=1", "optim.lr=1e30"])
    assert train(cfg, shards, run) == EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "no checkpoint had been written yet, so there is none to resume" in err, err
    assert "kept" not in err and not (run / "checkpoints").exists()


def test_offline_wandb_run_holds_the_metrics(shards, tmp_path):
    from wandb_records import history    # imports wandb, which the GPU machine lacks

    run = tmp_path / "run"
    cfg = load_config(SMOKE, SMALL_RUN + ["logging.wandb=offline", "schedule.epochs=1"])
    os.environ["WANDB_SILENT"] = "true"
    assert train(cfg, shards, run) == 0
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    assert files[0].name == f"run-{(run / 'wandb_id.txt').read_text()}.wandb"
    rows = history(files[0])
    local = read_metrics(run)
    logged = [r["loss"] for r in local if r["event"] == "train"]
    assert [r["train/loss"] for r in rows if "train/loss" in r] == pytest.approx(logged)
    val = next(r for r in local if r["event"] == "val")
    assert any(r.get("val/top1_err") == pytest.approx(val["top1_err"]) for r in rows)


def test_checkpoint_moves_between_single_device_and_towers(shards, tmp_path):
    """Epoch 1 on one device, epoch 2 as the paper's two towers (two CPU 'devices'),
    equals two epochs on one device: same weights layout, optimizer state carried over."""
    base = SMALL_RUN + ["data.workers=1", "schedule.epochs=2"]
    single = tmp_path / "single"
    assert train(load_config(SMOKE, base), shards, single) == 0
    mixed = tmp_path / "mixed"
    assert train(load_config(SMOKE, base + ["schedule.epochs=1"]), shards, mixed) == 0
    assert train(load_config(SMOKE, base + ["train.parallel=towers"]), shards, mixed) == 0
    a, b = final_weights(single), final_weights(mixed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    start = load(mixed / "checkpoints" / "last.pt")
    assert start["epoch"] == 2 and start["config"]["train"]["parallel"] == "towers"


def test_metrics_reader_ignores_a_torn_last_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"event": "start"}\n{"event": "train", "lo')
    assert read_metrics(tmp_path) == [{"event": "start"}]
    assert capsys.readouterr().err == ""
    (tmp_path / "metrics.jsonl").write_text('{"event": "st\n{"event": "done"}\n')
    assert read_metrics(tmp_path) == [{"event": "done"}]   # damage elsewhere: skipped, not silently
    assert "metrics.jsonl: line 1 is not a JSON record; skipped" in capsys.readouterr().err


def test_two_ranks_end_to_end_with_an_empty_last_batch(tmp_path):
    """torchrun, 2 gloo ranks, 25 images, global batch 8: rank 0 holds 12 images (3 full
    batches), rank 1 holds 13 (4 batches, the last of one image); at step 4 rank 0 steps
    with an empty batch, and the run must finish with every image used once."""
    shards = write_shards(tmp_path / "s", classes=4, train=25, val=6, shard_size=10)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "repro.cli", "train", "--config", str(SMOKE), "--data", str(shards),
           "--out", str(run), *SMALL_RUN, "data.batch_size=8", "schedule.epochs=1",
           "train.log_every=1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    state = load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["global_step"], state["stream"]["world"]) == (1, 4, 2)
    images = [r["images"] for r in read_metrics(run) if r["event"] == "train"]
    assert images == [8, 8, 8, 1]               # global images per step, over both ranks


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_step_stats_reach_the_host_and_a_nonfinite_loss_stops(device):
    """to_host starts the copy and returns (with an event to wait on, on CUDA); settle
    adds the stats to the window, returns the flags, and raises on a non-finite loss."""
    import numpy as np

    from repro.step import NonFiniteLoss, settle, to_host

    stats = torch.tensor([12.5, 7.0, 16.0, 0.0, 1.0], device=device)
    host, done = to_host(stats)
    assert host.device.type == "cpu" and (done is None) == (device == "cpu")
    window = np.zeros(3)
    flags = settle((host, done), window, epoch=0, step=3)
    assert window.tolist() == [12.5, 7.0, 16.0] and flags.tolist() == [0.0, 1.0]
    with pytest.raises(NonFiniteLoss, match="loss is nan at epoch 3 step 5"):
        settle(to_host(torch.tensor([math.nan, 0, 1, 0, 0], device=device)), window, 2, 4)


def test_validation_is_on_the_centre_crop_unmirrored_without_colour_noise(shards):
    """What validate() feeds the model: each val image's centre window minus the mean
    image there (section 6's single-crop figure), never mirrored, no PCA noise; written
    out here from the shards read with PIL."""
    cfg = load_config(SMOKE, SMALL_RUN + ["data.val_batch_size=5"])
    normalizer = make_normalizer(cfg, Path(shards) / "stats.npz", torch.device("cpu"))
    model = build_model(model_kwargs(cfg))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    result = validate(model, cfg, split_shards(shards, "val"), normalizer, DistContext(),
                      torch.device("cpu"), nullcontext())
    assert result["n"] == 12 and [len(x) for x in seen] == [5, 5, 2]
    # the PIL decode may differ from libjpeg-turbo's by a level or two
    torch.testing.assert_close(torch.cat(seen), centre_inputs(shards, "val", 67), rtol=0, atol=2.5)
    assert model.training          # handed back in training mode


def test_repro_eval_of_a_checkpoint_equals_the_trainers_validation_record(shards, tmp_path,
                                                                           capsys):
    """Validation and `repro eval` feed the model one way (Normalizer.eval_input): the same
    input tensors reach the model in eval mode, and the centre-crop errors of a checkpoint
    equal those the trainer recorded for it."""
    from repro.cli import main
    from repro.model import AlexNet

    fed = {"train": [], "eval": []}
    phase = "train"

    def record(module, args):
        if isinstance(module, AlexNet) and not module.training:
            fed[phase].append(args[0].clone())
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run = tmp_path / "run"
        cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=1", "schedule.epochs=1",
                                         "data.val_batch_size=5"])
        assert train(cfg, shards, run) == 0
        trained = next(r for r in read_metrics(run) if r["event"] == "val")
        capsys.readouterr()
        phase = "eval"
        assert main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data",
                     str(shards), "--json", "--device", "cpu"]) == 0
    finally:
        hook.remove()
    evaluated = json.loads(capsys.readouterr().out)
    assert len(fed["train"]) == len(fed["eval"]) == 3             # batches of 5, 5, 2
    assert torch.equal(torch.cat(fed["train"]), torch.cat(fed["eval"]))
    assert evaluated["n"] == trained["n"] == 12
    assert evaluated["top1_err"] == pytest.approx(trained["top1_err"], abs=1e-9)
    assert evaluated["top5_err"] == pytest.approx(trained["top5_err"], abs=1e-9)


def test_a_second_trainer_on_the_same_run_dir_is_refused(shards, tmp_path):
    """The same job submitted twice: the second exits 2 naming the first, and the first's
    run dir is left alone; once the first has ended, the run dir is free again."""
    from repro.checkpoint import lock_run

    run = tmp_path / "run"
    held = lock_run(run)                 # as a live trainer holds it (another process's lock)
    r = subprocess.run(cli(shards, run), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert f"{run} is being trained by pid {os.getpid()}" in r.stderr
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    held.close()
    cfg = load_config(SMOKE, SMALL_RUN + ["data.workers=1", "schedule.epochs=1"])
    assert train(cfg, shards, run) == 0
    assert train(cfg, shards, run) == 0  # its own lock was let go when train returned


def test_the_run_says_what_it_is_how_far_and_where_its_best_checkpoint_is(shards, tmp_path,
                                                                           capsys):
    """The banner (once), the first step's line at once with log_every 50 (then on the
    interval and at the epoch's end), with img/s and ETAs; the final lines, whose eval
    command works; and the same command on the finished run: 'already finished',
    nothing written."""
    from repro.cli import main

    run = tmp_path / "run"
    cfg = load_config(SMOKE, SMALL_RUN + ["schedule.epochs=2", "train.log_every=50"])
    assert train(cfg, shards, run) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"new run: {run}"
    assert out[1].startswith("  devices: cpu (") and out[1].endswith("; world size 1")
    assert f"  data: {shards}: generated shards, 44 train images, 12 val images, 4 classes" in out
    assert "  steps: 3 an epoch (batches of 16 images), 6 in 2 epochs (0 done)" in out  # 44/16
    assert f"  checkpoints: {run / 'checkpoints'} at every epoch's end and every 1000 min; " \
           "the last 2 kept, and best.pt" in out
    assert "  W&B: disabled (logging.wandb); metrics.jsonl only" in out
    steps = [re.match(r"epoch (\d) step (\d)/3 loss [\d.]+ lr [\d.e-]+ \d+ img/s, "
                      r"ETA epoch (\d+)s, run (\d+)s$", line) for line in out
             if line.startswith("epoch") and " step " in line]
    assert [(m[1], m[2]) for m in steps] == [("1", "1"), ("1", "3"), ("2", "3")]
    assert int(steps[0][4]) >= int(steps[0][3]) and steps[-1][4] == "0"
    best = min((r for r in read_metrics(run) if r["event"] == "val"), key=lambda r: r["top1_err"])
    ckpt = run / "checkpoints" / "best.pt"
    assert out[-3:] == [
        f"done: 2 epochs, best top-1 {best['top1_err']:.2f}%, top-5 {best['top5_err']:.2f}% "
        f"(val, centre crop, epoch {best['epoch']})", f"best checkpoint: {ckpt}",
        f"evaluate it with ten crops: repro eval --checkpoint {ckpt} --data {shards} --ten-crop"]
    assert main(out[-1].split("repro ")[1].split() + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["crops"] == 10

    before = (run / "metrics.jsonl").read_bytes()
    assert train(cfg, shards, run) == 0
    assert capsys.readouterr().out.splitlines() == [
        "already finished: " + out[-3].removeprefix("done: "), *out[-2:]]
    assert (run / "metrics.jsonl").read_bytes() == before
    assert train(load_config(SMOKE, SMALL_RUN + ["schedule.epochs=3", "train.log_every=50"]),
                 shards, run) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == f"resuming {run}/checkpoints/last.pt at epoch 3 step 0"
    assert sum(line.startswith("resuming") for line in again) == 1     # said once, in the banner
    assert "  steps: 3 an epoch (batches of 16 images), 9 in 3 epochs (6 done)" in again
    assert [line[:16] for line in again if line.startswith("epoch 3 step")] == [
        "epoch 3 step 1/3", "epoch 3 step 3/3"]


def test_steps_left_in_the_epoch_and_the_run():
    from repro.console import steps_left
    from repro.resume import Position

    assert steps_left(Position(epoch=0, step=1), steps=3, epochs=2) == (2, 2 + 3)
    assert steps_left(Position(epoch=4, step=0), steps=10, epochs=7) == (10, 30)
    assert steps_left(Position(epoch=6, step=10), steps=10, epochs=7) == (0, 0)


def test_bias_one_init_with_few_classes_needs_a_smaller_lr():
    """Why the smoke run's loss once jumped to 30-70 (chance: ln 10 = 2.3), and that the
    smoke lr keeps it near chance. The bias-1 init makes fc7's output large and about the
    same for every image, so the loss's curvature along it is ~|fc7|^2 / classes, and SGD
    with momentum 0.9 is stable only while lr x that < 2(1 + 0.9) = 3.8. Measured on the
    paper's model (10 classes, batch 16, random images and labels): the paper's lr is
    past the limit and the loss blows up within 5 steps; the smoke lr is well inside it."""
    from repro.placement import place_model
    from repro.step import build_optimizer, train_step

    def run(lr: float) -> tuple[float, list[float]]:
        cfg = load_config(SMOKE, ["data.crop_size=67", f"optim.lr={lr}", "train.device=cpu"])
        placed = place_model(cfg, torch.device("cpu"))
        opt, g = build_optimizer(cfg, placed.model), torch.Generator().manual_seed(0)
        torch.manual_seed(0)                                # the dropout masks
        fc7 = []
        placed.model.fc7.register_forward_hook(
            lambda m, i, o: fc7.append((torch.relu(o) ** 2).sum(1).mean().item()))
        losses = []
        for _ in range(5):
            x = torch.randn(16, 3, 67, 67, generator=g) * 60
            y = torch.randint(0, 10, (16,), generator=g)
            losses.append(train_step(placed.net, opt, x, y, 1, 16)[0].item() / 16)
        return lr * fc7[0] / cfg.model.num_classes, losses

    smoke_lr = load_config(SMOKE).optim.lr
    ratio, losses = run(smoke_lr)
    assert ratio < 1 and max(losses) < 2 * math.log(10), (ratio, losses)
    ratio, losses = run(load_config(ROOT / "configs" / "alexnet_paper.yaml").optim.lr)
    assert ratio > 3.8 and max(losses) > 5 * math.log(10), (ratio, losses)
