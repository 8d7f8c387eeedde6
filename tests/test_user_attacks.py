"""What a new user pushing the commands runs into: empty classes in the layouts that have
no class list, a full disk under `repro figures`, checkpoint paths that are missing or
directories, a split the layout never had, a phone photo's EXIF orientation, Figure 4's
classes, a damaged checkpoint separated from its digest file, and a CIFAR-10 run whose
--out is being trained. Each check is of the real command or function on real files."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.build_shards import build_shards
from data_prep.records import SourceError
from data_prep_helpers import build, cli, fixture
from repro import checkpoint
from repro.checkpoint import CheckpointError, lock_run
from repro.cli import main
from repro.exits import EXIT_NO_SPACE
from repro import figures
from repro.predict import predict
from run_helpers import CLASSES, EVAL_SHARDS, ROOT, split_images, tmpfs
from shard_helpers import class_image, write_shards

SHARDS = EVAL_SHARDS
EMPTY = "n09999999"        # a synset that sorts last: no label before it would shift


@pytest.fixture(scope="module")
def ckpt(ckpts):
    return ckpts[0]


def empty_tar(path: Path) -> None:
    with tarfile.open(path, "w"):
        pass


# ---- an empty class: refused where the classes are what is found, named where listed ------
@pytest.mark.parametrize("form", ["tar", "folder", "whole"])
def test_an_empty_fall2011_synset_is_refused_naming_it(tmp_path, form):
    src = tmp_path / "src"
    fixture(src, "fall2011", quirks=False, classes=2, train_per_class=3)
    if form == "whole":        # an empty inner tar of fall11_whole.tar
        empty_tar(tmp_path / f"{EMPTY}.tar")
        with tarfile.open(src / "fall11_whole.tar", "a") as whole:
            whole.add(tmp_path / f"{EMPTY}.tar", f"{EMPTY}.tar")
        where = f"fall11_whole.tar/{EMPTY}.tar"
    else:
        with tarfile.open(src / "fall11_whole.tar") as whole:
            whole.extractall(src)
        (src / "fall11_whole.tar").unlink()
        if form == "tar":
            empty_tar(src / f"{EMPTY}.tar")
        else:
            (src / EMPTY).mkdir()
            (src / EMPTY / "notes.txt").write_text("not an image")
        where = f"{EMPTY}.tar" if form == "tar" else f"{EMPTY}/"
    with pytest.raises(SourceError, match=rf"{where}: a synset with no images \(1 such: "
                                          rf"{EMPTY}\); its class would have nothing to train"):
        build(src, tmp_path / "out")
    r = cli("data_prep.build_shards", "--source", str(src), "--out", str(tmp_path / "out2"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and EMPTY in r.stderr, r.stderr


def test_a_synset_missing_from_the_ilsvrc2010_train_tar_is_named(tmp_path):
    """The devkit's class list keeps its label (as for a missing class folder beside a
    devkit); the build says which class nothing trains."""
    src = tmp_path / "src"
    desc = fixture(src, "ilsvrc2010", quirks=False, classes=3, train_per_class=2,
                   val_per_class=1)
    gone = sorted(desc["classes"])[1]
    train = src / "ILSVRC2010_images_train.tar"
    kept = io.BytesIO()
    with tarfile.open(train) as old, tarfile.open(fileobj=kept, mode="w") as new:
        for m in old.getmembers():
            if m.name != f"{gone}.tar":
                new.addfile(m, old.extractfile(m))
    train.write_bytes(kept.getvalue())
    log = []
    m = build_shards(src, tmp_path / "out", shard_size=8, workers=1, log=log.append)
    warnings = [line for line in log if line.startswith("WARNING train: no images of")]
    assert warnings == [f"WARNING train: no images of 1 classes, whose labels are kept but "
                        f"nothing trains them: {gone}"]
    assert m["classes"] == sorted(desc["classes"])


# ---- repro figures on a full disk: exit 74 in one line, earlier figures intact ------------
@pytest.fixture
def full_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "512k") as disk:
        yield disk


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError:            # ENOSPC: full
            pass


def test_figures_on_a_full_disk_exit_74_in_one_line(ckpt, full_disk, capsys):
    run = full_disk / "run"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "filters.png").write_bytes(b"an earlier figure")
    (run / "metrics.jsonl").write_text(json.dumps(
        {"event": "train", "epoch": 0, "step": 1, "global_step": 1, "loss": 1.0,
         "top1_err": 70.0, "lr": 0.01}) + "\n")
    fill(full_disk)
    status = main(["figures", str(run), "--checkpoint", str(ckpt), "--device", "cpu"])
    assert status == EXIT_NO_SPACE
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(
        f"error: no space left on device while writing {run / 'figures'}/")
    assert "Traceback" not in err
    assert (run / "figures" / "filters.png").read_bytes() == b"an earlier figure"
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["filters.png"]


# ---- checkpoint paths: missing, or a directory --------------------------------------------
def test_predict_says_a_missing_checkpoint_is_missing_before_asking_for_shards(tmp_path, capsys):
    Image.new("RGB", (300, 256)).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "MISSING.pt"),
                 str(tmp_path / "photo.png")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'MISSING.pt'}: checkpoint not found\n"


@pytest.mark.parametrize("given", ["run", "run/checkpoints"])
def test_a_directory_for_a_checkpoint_names_the_file_meant(shards, tmp_path, capsys, given):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "best.pt").write_bytes(b"")
    Image.new("RGB", (300, 256)).save(tmp_path / "photo.png")
    says = (f"error: {tmp_path / given}: is a directory; give a checkpoint file, e.g. "
            f"{ckpts / 'best.pt'}\n")
    assert main(["eval", "--checkpoint", str(tmp_path / given), "--data", str(shards),
                 "--device", "cpu"]) == 2
    assert capsys.readouterr().err == says
    assert main(["predict", "--checkpoint", str(tmp_path / given),
                 str(tmp_path / "photo.png")]) == 2
    assert capsys.readouterr().err == says


# ---- a split the layout never had ----------------------------------------------------------
def test_eval_of_a_test_split_says_which_layout_has_one(shards, ckpt, tmp_path, capsys):
    folder = tmp_path / "folder_shards"
    shutil.copytree(shards, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["settings"] = {"layout": "folder", "splits": ["train", "val"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(folder), "--split", "test",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {folder / 'manifest.json'}: no 'test' split: the folder layout has "
                   f"no labelled test images (only ilsvrc2010 has; these shards have train, val)\n")
    assert "--splits" not in err


# ---- predict: a phone photo stored sideways -----------------------------------------------
def test_predict_turns_a_photo_upright_by_its_exif_orientation(shards, ckpt, tmp_path):
    stored = np.concatenate([class_image(np.random.default_rng(3), 1, CLASSES)[:200]] * 2,
                            axis=1)                                   # 200 x 512, landscape
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6                                                   # "turn 90 degrees clockwise"
    Image.fromarray(stored).save(tmp_path / "tagged.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "sideways.png")
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(tmp_path / "upright.png")
    tagged, sideways, upright = predict(ckpt, [tmp_path / n for n in (
        "tagged.png", "sideways.png", "upright.png")], data=shards, device="cpu")
    assert tagged.top == upright.top and tagged.top != sideways.top


# ---- Figure 4: eight classes, of the split asked -------------------------------------------
def test_figure_4_shows_different_classes_of_the_split_asked(tmp_path):
    many = write_shards(tmp_path / "many", classes=10, train=10, val=40, test=40, shard_size=7)
    for split in ("val", "test"):
        images, labels = figures.pick_images(many, split, 8)
        all_images, all_labels = split_images(many, split)
        firsts = {}
        for i, c in enumerate(all_labels.tolist()):
            firsts.setdefault(c, i)
        assert labels.tolist() == list(firsts)[:8]                     # the first 8 classes met
        expect = torch.from_numpy(all_images[[firsts[c] for c in labels.tolist()]])
        assert torch.equal(images, expect.permute(0, 3, 1, 2))
    _, few_labels = figures.pick_images(many, "val", 11)           # more than it has: the first 11
    assert torch.equal(few_labels, split_images(many, "val")[1][:11])


def test_figures_refuse_a_split_the_shards_lack_before_drawing(shards, ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["figures", str(run), "--checkpoint", str(ckpt), "--data", str(shards),
                 "--split", "test", "--device", "cpu"]) == 2
    assert "no 'test' split" in capsys.readouterr().err and not run.exists()


# ---- a damaged checkpoint without its .sha256 ----------------------------------------------
def test_a_bit_flipped_checkpoint_without_its_digest_file_is_refused(tmp_path):
    weights = torch.arange(5000, dtype=torch.float32)
    path = checkpoint.save({"global_step": 1, "model": {"w": weights}, "config": {"a": 1}},
                           tmp_path / "checkpoints", keep_last=1, is_best=False)
    alone = tmp_path / "copied" / path.name                         # its .sha256 left behind
    alone.parent.mkdir()
    shutil.copy(path, alone)
    assert torch.equal(checkpoint.load(alone)["model"]["w"], weights)    # intact: loads
    state = torch.load(alone, weights_only=False)
    state["config"] = {"a": 2}                                      # edited by hand: not weights
    torch.save(state, tmp_path / "edited.pt")
    assert checkpoint.load(tmp_path / "edited.pt")["config"] == {"a": 2}
    data = bytearray(alone.read_bytes())
    data[data.index(weights.numpy().tobytes()) + 4001] ^= 0x10    # one bit of one weight
    alone.write_bytes(bytes(data))
    assert not torch.equal(torch.load(alone, weights_only=False)["model"]["w"], weights)
    with pytest.raises(CheckpointError, match=rf"{alone.name}: its tensors do not match the "
                                              rf"tensors_sha256 saved inside it"):
        checkpoint.load(alone)


# ---- python -m repro.cifar on a --out another process trains -------------------------------
def test_a_second_cifar_run_on_a_locked_out_is_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    lock = lock_run(out / "lrn" / "with")            # a live trainer of that run: this process
    try:
        r = subprocess.run([sys.executable, "-m", "repro.cifar", "lrn",
                            "--root", str(tmp_path / "data"), "--out", str(out),
                            "--generate", "40,10", "--epochs", "1", "--drop-epochs", "0",
                            "train.device=cpu", "logging.progress=off", "train.batch_size=8"],
                           cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    finally:
        lock.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"error: {out / 'lrn' / 'with'} is being trained by pid {os.getpid()} on "
                        f"{os.uname().nodename}; wait for it to end, or train into another --out\n")
