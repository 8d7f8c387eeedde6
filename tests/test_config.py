import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.cli import main
from repro.config import Config, ConfigError, config_from_dict, load_config, resume_changes

CONFIGS = Path(__file__).parent.parent / "configs"
PAPER = CONFIGS / "alexnet_paper.yaml"


def test_paper_yaml_sets_every_key_and_equals_defaults():
    doc = yaml.safe_load(PAPER.read_text())
    for section in dataclasses.fields(Config):
        names = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(doc[section.name]) == names, section.name
    assert load_config(PAPER) == Config()


def test_paper_values():
    cfg = load_config(PAPER)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.01, 0.9, 0.0005)
    assert (cfg.data.batch_size, cfg.data.crop_size) == (128, 227)
    assert (cfg.model.lrn_k, cfg.model.lrn_size, cfg.model.lrn_alpha, cfg.model.lrn_beta) == (
        2.0, 5, 1e-4, 0.75)
    assert (cfg.schedule.epochs, cfg.schedule.factor, cfg.schedule.max_drops) == (90, 0.1, 3)
    assert cfg.augment.pca_std == 0.1 and cfg.model.dropout == 0.5
    assert (cfg.model.pool_kernel, cfg.model.pool_stride, cfg.model.groups) == (3, 2, 2)
    assert (cfg.model.weight_std, cfg.model.bias_value, cfg.train.precision) == (0.01, 1.0, "fp32")


def test_overrides_and_base_inheritance():
    cfg = load_config(CONFIGS / "smoke.yaml", ["optim.lr=0.02", "model.bias_one=[conv2]"])
    assert cfg.optim.lr == 0.02 and cfg.model.bias_one == ["conv2"]
    assert cfg.model.num_classes == 10          # from smoke.yaml
    assert cfg.model.groups == 2                # inherited from the paper config


@pytest.mark.parametrize("override, words", [
    (["optim.lrr=1"], ["optim.lrr", "unknown"]),
    (["nosection.x=1"], ["nosection.x", "unknown"]),
    (["optim.lr=-0.1"], ["optim.lr", "> 0"]),
    (["model.groups=two"], ["model.groups", "integer"]),
    (["data.crop_size=300"], ["data.crop_size", "larger than the stored 256x256"]),
    (["model.lrn=fancy"], ["model.lrn", "paper"]),
    (["model.dropout=1.5"], ["model.dropout"]),
    (["augment.flip=maybe"], ["augment.flip", "true or false"]),
    (["augment.flip=yes"], ["augment.flip", "true or false"]),   # YAML 1.2: only true/false
    (["optim.lr=.inf"], ["optim.lr", "finite"]),
    (["optim.weight_decay=.nan"], ["optim.weight_decay", ">= 0"]),
    (["optim.momentum=5"], ["optim.momentum", "[0, 1)"]),
    (["train.compile_mode=fastest"], ["train.compile_mode", "reduce-overhead"]),
    (["lr"], ["section.key=value"]),
    # valid alone, but the model cannot be built or run with them (a traceback before)
    (["model.bias_one=[fc9]"], ["model.bias_one", "fc9", "conv1, conv2"]),
    (["train.pad_input_channels=2"], ["train.pad_input_channels = 2", "model.in_channels = 3"]),
    (["data.crop_size=10"], ["data.crop_size = 10", "too small", "conv1's 11x11"]),
    (["data.crop_size=40", "model.pool_kernel=7"], ["data.crop_size = 40", "pool_kernel=7"]),
    (["model.removed_convs=[conv4]"], ["model.bias_one names ['conv4']", "conv3, conv5"]),
    (["model.half_kernels=true"], ["model.half_kernels", "model.groups = 1"]),
    (["train.parallel=towers", "model.groups=1"], ["train.parallel", "model.groups = 2"]),
    (["train.parallel=towers", "model.extra_conv6=true"], ["five conv layers",
                                                          "model.extra_conv6"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(PAPER, override)
    for word in words:
        assert word in str(e.value)


def test_loading_a_config_does_not_import_torch():
    # A config is plain data: loading one, the model's rules included, needs no PyTorch.
    code = ("import sys; from repro.config import load_config; load_config('alexnet_paper'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bad_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\noptim:\n  momentun: 0.9\n" % PAPER)
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "optim.momentun" in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_off_and_on_are_words_not_booleans(tmp_path):
    """logging.progress takes 'off'; YAML 1.1 would read it as False."""
    assert load_config(PAPER, ["logging.progress=off"]).logging.progress == "off"
    f = tmp_path / "quiet.yaml"
    f.write_text(f"base: {PAPER}\nlogging:\n  progress: off\ntrain:\n  compile: True\n")
    cfg = load_config(f)
    assert cfg.logging.progress == "off" and cfg.train.compile is True


def test_round_trip_through_dict():
    cfg = load_config(CONFIGS / "smoke.yaml", ["optim.lr=0.003"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cli_prints_resolved_config(capsys):
    assert main(["config", "--config", str(PAPER), "optim.lr=0.05"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.05 and printed["model"]["groups"] == 2
    assert main(["config", "--config", str(PAPER), "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err


def test_fast_config_is_the_paper_config_with_speed_switches_only():
    paper = load_config(CONFIGS / "alexnet_paper.yaml").to_dict()
    fast = load_config(CONFIGS / "alexnet_fast.yaml").to_dict()
    differ = {(section, key) for section in paper for key in paper[section]
              if paper[section][key] != fast[section][key]}
    assert differ == {("train", "precision"), ("train", "channels_last"), ("train", "compile")}
    assert (fast["train"]["precision"], fast["train"]["channels_last"], fast["train"]["compile"]) \
        == ("bf16", True, True)


def test_a_shipped_config_by_name():
    assert load_config("alexnet_paper") == load_config(PAPER) == Config()
    assert load_config("ablations/no_lrn", ["data.batch_size=64"]) == load_config(
        CONFIGS / "ablations" / "no_lrn.yaml", ["data.batch_size=64"])
    assert load_config("ablations/no_lrn").model.lrn == "none"
    with pytest.raises(ConfigError, match="config file not found: .*configs/no_such_config.yaml"):
        load_config("no_such_config")


def test_resume_changes_names_what_defines_the_run():
    saved = Config().to_dict()
    now = load_config(None, ["optim.lr=0.02", "train.seed=1", "data.workers=2",
                             "schedule.epochs=10"]).to_dict()
    # lr and the seed define the run; the loader's workers and the run's length may change
    assert resume_changes(saved, now) == ["optim.lr: 0.01 -> 0.02", "train.seed: 0 -> 1"]
    assert resume_changes(saved, Config().to_dict()) == []


def test_resume_changes_counts_a_missing_setting_as_changed():
    saved, now = Config().to_dict(), Config().to_dict()
    del saved["optim"]["decay_biases"]         # a setting the saved config does not have
    now["model"]["extra"] = 3                  # and one only the new config has
    del now["data"]["workers"]                 # may change: not compared either way
    assert resume_changes(saved, now) == ["model.extra: missing -> 3",
                                          "optim.decay_biases: missing -> True"]
    assert resume_changes(now, saved) == ["model.extra: 3 -> missing",
                                          "optim.decay_biases: True -> missing"]


def test_a_duplicate_key_is_refused_naming_it_and_the_file(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text(f"base: {PAPER}\noptim:\n  lr: 0.1\n  momentum: 0.5\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == (f"{f}: duplicate key 'lr' (lines 3 and 5): YAML would keep only "
                            f"the last value")
    f.write_text("optim:\n  lr: 0.1\nmodel:\n  groups: 1\noptim:\n  momentum: 0.5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'optim' \(lines 1 and 5\)"):
        load_config(f)


def test_a_missing_base_says_it_is_relative_to_the_file(tmp_path, monkeypatch):
    sub = tmp_path / "mine"
    sub.mkdir()
    f = sub / "run.yaml"
    f.write_text("base: configs/alexnet_paper.yaml\noptim:\n  lr: 0.02\n")
    monkeypatch.chdir(CONFIGS.parent)      # where configs/alexnet_paper.yaml does exist
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: base file 'configs/alexnet_paper.yaml' not found at "
                                   f"{sub / 'configs' / 'alexnet_paper.yaml'} (a base: path is "
                                   f"relative to the file that names it, not to the working "
                                   f"directory); {PAPER.resolve()} exists: write it relative to {sub}")
    f.write_text(f"base: {os.path.relpath(PAPER, sub)}\noptim:\n  lr: 0.02\n")
    assert load_config(f).optim.lr == 0.02
