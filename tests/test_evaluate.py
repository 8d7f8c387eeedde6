"""repro eval: the 10 crops against torchvision's TenCrop, top-k by hand, ensembles, and the
checkpoints it must refuse. A random model on 68 px crops (data.crop_size) keeps it fast;
the architecture is the paper's (tests/run_helpers.py: CROP)."""
import csv
import json

import numpy as np
import pytest
import torch

from repro.cli import main
from repro.distributed import pick_device
from repro.augment import eval_views
from repro.evaluate import EvalError, EvalResult, ensemble_probs, evaluate, load_member
from repro.metrics import topk_correct
from run_helpers import (CLASSES, EVAL_SHARDS, make_checkpoint, reference_probs,
                         split_images)
from shard_helpers import write_shards

SHARDS = EVAL_SHARDS


def errors(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top5 = probs.topk(5 if probs.shape[1] >= 5 else probs.shape[1], 1).indices
    n = len(labels)
    return (100 * (1 - (top5[:, 0] == labels).sum().item() / n),
            100 * (1 - (top5 == labels[:, None]).any(1).sum().item() / n))


def confusion(probs: torch.Tensor, labels: torch.Tensor, c: int = CLASSES) -> np.ndarray:
    return np.bincount(labels * c + probs.argmax(1), minlength=c * c).reshape(c, c)


def test_topk_correct_by_hand():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.3, 0.0],    # order 3 1 4 2 0 5
                           [0.6, 0.1, 0.0, 0.2, 0.3, 0.4],    # order 0 5 4 3 1 2
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])   # order 5 4 3 2 1 0
    labels = torch.tensor([3, 2, 1])    # top-1 hit; rank 6; rank 5
    assert topk_correct(scores, labels, (1, 2, 5)) == [1, 1, 2]
    r = EvalResult(["x.pt"], ["a", "b", "c"], 1, "val",
                   confusion=np.array([[3, 1, 0], [0, 2, 2], [1, 0, 1]]),   # 6 of 10 right
                   top5_hits=np.array([4, 3, 1]))
    assert r.summary() == {"top1_err": pytest.approx(40.0), "top5_err": pytest.approx(20.0),
                           "n": 10, "crops": 1, "checkpoints": ["x.pt"], "split": "val"}


@pytest.fixture(scope="module")
def val(shards):
    return split_images(shards)


@pytest.fixture(scope="module")
def expected(shards, ckpts, val):
    return [reference_probs(c, shards, val[0]) for c in ckpts]


@pytest.fixture(scope="module")
def one(shards, ckpts):
    return evaluate([ckpts[0]], shards, ten_crop=True, device="cpu")


def test_ten_crop_equals_torchvision_tencrop(shards, ckpts, val, expected, one):
    images = torch.from_numpy(val[0]).permute(0, 3, 1, 2).contiguous()
    member = load_member(ckpts[0], shards / "stats.npz", pick_device("cpu"))
    torch.testing.assert_close(member.probs(images, ten_crop=True), expected[0],
                               rtol=1e-4, atol=1e-5)
    assert (member.probs(images, False) - expected[0]).abs().max() > 1e-3  # the crops matter

    s = one.summary()
    assert (s["n"], s["crops"]) == (12, 10)
    assert (s["top1_err"], s["top5_err"]) == pytest.approx(errors(expected[0], val[1]))
    assert np.array_equal(one.confusion, confusion(expected[0], val[1]))


def test_the_papers_ten_views_of_a_256_image_at_227():
    """Four 227 corner patches (offsets 0 and 256 - 227 = 29), the centre patch (offset
    14: the 29-pixel margin is odd, so it sits 1 px nearer the top left) and the five
    mirrored, as (y, x, mirrored)."""
    patches = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    assert eval_views(256, 227, True) == [(y, x, m) for m in (False, True) for y, x in patches]
    assert eval_views(256, 227, False) == [(14, 14, False)]


def test_ensemble_averages_softmax_and_two_copies_equal_one(shards, ckpts, val, expected, one):
    two = evaluate([ckpts[0], ckpts[0]], shards, ten_crop=True, device="cpu")
    assert np.array_equal(one.confusion, two.confusion)
    assert np.array_equal(one.top5_hits, two.top5_hits)
    assert len(two.summary()["checkpoints"]) == 2

    images = torch.from_numpy(val[0]).permute(0, 3, 1, 2).contiguous()
    members = [load_member(c, shards / "stats.npz", pick_device("cpu")) for c in ckpts]
    mixed = (expected[0] + expected[1]) / 2
    torch.testing.assert_close(ensemble_probs(members, images, True), mixed, rtol=1e-4, atol=1e-5)
    pair = evaluate(list(ckpts), shards, ten_crop=True, device="cpu", batch_size=7)
    assert np.array_equal(pair.confusion, confusion(mixed, val[1]))


def test_refuses_checkpoints_that_do_not_fit(shards, ckpts, tmp_path, capsys):
    five = make_checkpoint(tmp_path / "five.pt", "model.num_classes=5")
    with pytest.raises(EvalError, match=r"five.pt has model.num_classes = 5 but .*manifest.json "
                                        rf"lists {CLASSES} classes"):
        evaluate([five], shards, device="cpu")
    with pytest.raises(EvalError, match=rf"differ in model.num_classes: .*a.pt has {CLASSES}, .*five.pt has 5"):
        evaluate([ckpts[0], five], shards, device="cpu")
    wnids = [f"n{i:08d}" for i in range(CLASSES)]
    other = make_checkpoint(tmp_path / "other.pt", classes=wnids[:2] + ["n09999999"] + wnids[3:])
    with pytest.raises(EvalError, match="class 2 is n09999999 in the checkpoint, n00000002"):
        evaluate([other], shards, device="cpu")
    assert main(["eval", "--checkpoint", str(five), "--data", str(shards)]) == 2
    assert "model.num_classes = 5" in capsys.readouterr().err


def test_cli_json_and_breakdown(shards, ckpts, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(ckpts[0]), "--data", str(shards), "--json",
                 "--device", "cpu", "--out", str(out), "--limit", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)      # stdout is exactly one JSON object
    assert set(printed) == {"top1_err", "top5_err", "n", "crops", "checkpoints", "split"}
    assert (printed["n"], printed["crops"], printed["checkpoints"]) == (10, 1, [str(ckpts[0])])
    assert json.loads((out / "eval.json").read_text()) == printed
    with open(out / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["wnid"] for r in rows] == json.loads((shards / "manifest.json").read_text())["classes"]
    assert sum(int(r["n"]) for r in rows) == 10
    wrong = 10 - sum(round(int(r["n"]) * (1 - float(r["top1_err"]) / 100)) for r in rows)
    assert wrong == round(printed["top1_err"] / 10)
    confusions = json.loads((out / "worst_confusions.json").read_text())
    assert sum(c["count"] for c in confusions) <= wrong
    assert all(c["wnid"] != c["predicted_wnid"] for c in confusions)


def test_the_test_split_is_evaluated_when_asked(tmp_path, capsys):
    """`repro eval --split test` (ILSVRC-2010's labelled test set, Table 1) reads the test
    shards: its errors are the reference procedure's on those images; shards without a
    test split get an error naming the manifest."""
    shards = write_shards(tmp_path / "s", classes=CLASSES, train=8, val=6, test=9, shard_size=5)
    classes = json.loads((shards / "manifest.json").read_text())["classes"]
    ckpt = make_checkpoint(tmp_path / "c.pt", classes=classes, shards=shards)
    images, labels = split_images(shards, "test")
    result = evaluate([ckpt], shards, ten_crop=True, device="cpu", split="test").summary()
    assert (result["n"], result["split"]) == (9, "test")
    expected = errors(reference_probs(ckpt, shards, images), labels)
    assert (result["top1_err"], result["top5_err"]) == pytest.approx(expected)
    no_test = write_shards(tmp_path / "v", classes=CLASSES, train=8, val=6, shard_size=5)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(no_test), "--split", "test",
                 "--device", "cpu"]) == 2
    assert "no 'test' split" in capsys.readouterr().err
