"""repro predict: the paper's test procedure on the user's own image files, against the
ten crops written out with torchvision's TenCrop on the same pixels (test_evaluate)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from repro.cli import main
from repro.predict import predict
from shard_helpers import class_image, write_shards
from run_helpers import CLASSES, make_checkpoint, reference_probs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    shards = write_shards(d / "shards", classes=CLASSES, train=8, val=6, shard_size=6)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["words"] = [f"thing {i}" for i in range(CLASSES)]     # the devkit's names
    (shards / "manifest.json").write_text(json.dumps(manifest))
    ckpt = make_checkpoint(d / "c.pt", classes=manifest["classes"], shards=shards)
    rng = np.random.default_rng(5)
    square = class_image(rng, 2, CLASSES)                              # 256x256: kept whole
    wide = np.concatenate([class_image(rng, 4, CLASSES)[:, :160]] * 2, axis=1)   # 320 wide
    Image.fromarray(square).save(d / "square.png")
    Image.fromarray(wide).save(d / "wide.png")
    (d / "notes.txt").write_text("not an image")
    return d, shards, ckpt, {"square.png": square, "wide.png": wide[:, 32:288]}


def test_top5_is_the_ten_crop_softmax_of_the_centre_256(setup):
    d, shards, ckpt, centres = setup
    names = [f"thing {i}" for i in range(CLASSES)]
    got = predict(ckpt, [d / n for n in centres], data=shards, device="cpu")
    reference = reference_probs(ckpt, shards, np.stack(list(centres.values())))
    for p, probs in zip(got, reference):
        values, indices = probs.topk(5)
        assert [n for n, _ in p.top] == [names[i] for i in indices]
        np.testing.assert_allclose([v for _, v in p.top], values.numpy(), rtol=1e-4, atol=1e-6)
    assert not torch.equal(reference[0], reference[1])       # two images, two answers


def test_cli_prints_names_and_refuses_what_is_not_an_image(setup, capsys):
    d, shards, ckpt, _ = setup
    assert main(["predict", "--checkpoint", str(ckpt), "--data", str(shards), "--device", "cpu",
                 str(d / "square.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{d / 'square.png'}:" and len(out) == 6 and "thing" in out[1]
    assert main(["predict", "--checkpoint", str(ckpt), "--data", str(shards), "--device", "cpu",
                 str(d / "square.png"), str(d / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'notes.txt'}: not an image this can read" in err and len(err.splitlines()) == 1
    assert main(["predict", "--checkpoint", str(ckpt), str(d / "square.png")]) == 2
    assert "give --data SHARDS" in capsys.readouterr().err
