"""repro bench runs every stage on whatever device is here and writes its JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from repro.cli import main
from shard_helpers import write_shards

ROOT = Path(__file__).parent.parent


def test_bench_runs_every_stage(tmp_path, capsys):
    shards = write_shards(tmp_path / "s", classes=3, train=48, val=24, shard_size=12)
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(shards), "--steps", "1", "--batches", "1",
                 "--workers", "1", "--variants", "fp32", "--loaders", "cpu,gpudec,hybrid50",
                 "--end-to-end", "fp32", "--soak", "4", "--json", str(out),
                 "data.batch_size=4", "data.val_batch_size=4", "data.crop_size=67"]) == 0
    result = json.loads(out.read_text())
    stages = [r["stage"][0] for r in result["results"]]
    assert stages == ["a", "b", "b", "b", "c", "f", "d", "e"]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    soak = next(r for r in result["results"] if r["stage"].startswith("f"))
    assert [s for s, _ in soak["rss_mb"]] == [1, 2, 3, 4]
    printed = capsys.readouterr().out
    assert "best end to end / baseline" in printed and "90 epochs" in printed


def test_bench_runs_the_stages_asked_for(tmp_path, capsys):
    shards = write_shards(tmp_path / "s", classes=3, train=24, val=24, shard_size=12)
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(shards), "--stages", "d", "--batches", "1",
                 "--workers", "1", "--end-to-end", "fp32", "--json", str(out),
                 "data.batch_size=4", "data.val_batch_size=2", "data.crop_size=67"]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["stage"] == "d: 10-crop eval"
    assert row["forward_images_per_s"] > 0 and row["images_per_s"] > 0
    assert "x 10 forward passes" in capsys.readouterr().out


def test_bench_stages_other_than_a_need_data(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--stages", "ab"])
    assert "stages b need --data" in capsys.readouterr().err


def test_bench_profile_ranks_the_steps_ops(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--stages", "a", "--variants", "fp32+split+pad4", "--steps", "1", "--profile", "2",
                 "--json", str(out), "data.batch_size=2", "data.crop_size=67"]) == 0
    profile = json.loads(out.read_text())["profile"]
    times = [e["ms_per_step"] for e in profile]
    assert len(profile) == 20 and times == sorted(times, reverse=True) and times[0] > 0
    assert 0 < sum(e["share"] for e in profile) <= 1.0 + 1e-9
    # a training step of AlexNet on the CPU spends its time in convolutions and matmuls
    assert any("conv" in e["name"] or "mm" in e["name"] for e in profile[:5])
    # split: conv2, conv4 and conv5 run as two convolutions each, 5 + 3 in all
    assert next(e for e in profile if e["name"] == "aten::convolution_backward")["calls_per_step"] == 8
    assert "profile of fp32+split+pad4, per step" in capsys.readouterr().out


def test_bench_refuses_an_unknown_variant_token(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--stages", "a", "--variants", "bf16+pad6"])
    assert "unknown ['pad6']" in capsys.readouterr().err


def test_a_stage_that_cannot_run_says_why_and_the_others_are_kept(tmp_path, capsys):
    """8 val images in batches of 4 are 2 full batches; the 10-crop stage needs 3 (2 to
    warm up): it is skipped with the reason, the stages before and after it are kept."""
    shards = write_shards(tmp_path / "s", classes=3, train=48, val=8, shard_size=12)
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(shards), "--stages", "acde", "--steps", "1",
                 "--batches", "1", "--workers", "1", "--variants", "fp32", "--end-to-end", "fp32",
                 "--json", str(out), "data.batch_size=4", "data.val_batch_size=4",
                 "data.crop_size=67"]) == 0
    result = json.loads(out.read_text())
    assert [r["stage"][0] for r in result["results"]] == ["a", "c", "e"]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    (skipped,) = result["skipped"]
    assert skipped["stage"] == "d: 10-crop eval" and skipped["reason"].startswith(
        "the shards give 2 full batches of 4 here, fewer than the 3 this stage needs")
    assert "data.val_batch_size" in skipped["reason"]
    printed = capsys.readouterr().out
    assert f"{'d: 10-crop eval':<24} {'fp32':<22} skipped: {skipped['reason']}" in printed
    assert f"wrote {out}: 3 results (1 skipped: see above)" in printed


def test_each_result_is_written_as_its_stage_finishes(tmp_path):
    """The JSON holds stage a's row while the bench is still running stage f."""
    shards = write_shards(tmp_path / "s", classes=3, train=24, val=4, shard_size=12)
    out = tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "bench", "--data", str(shards),
                             "--stages", "a", "--steps", "1", "--variants", "fp32",
                             "--workers", "1", "--soak", "400", "--json", str(out),
                             "data.batch_size=4", "data.crop_size=67"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:                        # stage a printed: its row is on disk
            if line.startswith("a: step (synthetic)"):
                break
        rows = json.loads(out.read_text())["results"]
        assert proc.poll() is None, "the soak ended too soon to tell"
        assert [r["stage"] for r in rows] == ["a: step (synthetic)"] and rows[0]["images_per_s"] > 0
    finally:
        proc.kill()
        proc.wait()
