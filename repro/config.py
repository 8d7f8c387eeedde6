"""Typed configuration: dataclasses <- YAML (with `base:` inheritance) <- dotted overrides.

Every paper value lives in configs/alexnet_paper.yaml; the dataclass defaults
below equal it so that `Config()` is the paper's recipe too. Anything wrong in
a config (unknown key, wrong type, impossible value) raises ConfigError naming
the key and where it came from. The model's values are checked by the model's own
rules (repro.model_spec), which need no torch.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data_prep.image import IMAGE_SIZE  # the shard images' side (paper section 2: 256)
from repro.exits import ReproError
from repro.model_spec import (LRN_IMPLS, PRECISIONS, check, check_padding, check_towers,
                              conv_layers)


class ConfigError(ReproError, ValueError):
    pass


@dataclass
class ModelConfig:
    num_classes: int = 1000
    in_channels: int = 3
    groups: int = 2                  # the paper's two towers; 1 = one tower, same widths
    half_kernels: bool = False       # the paper's "one-GPU" comparison net (section 3.2)
    conv1_padding: int = 0
    lrn: str = "paper"               # paper | cuda-convnet | caffe | none
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    pool_kernel: int = 3             # 3/2 overlapping (paper); 2/2 the ablation
    pool_stride: int = 2
    dropout: float = 0.5
    init: str = "paper"              # paper | torch | xavier (d2l)
    weight_std: float = 0.01
    bias_one: list[str] = field(default_factory=lambda: ["conv2", "conv4", "conv5", "fc6", "fc7"])
    bias_value: float = 1.0
    seed: int = 0
    activation: str = "relu"         # relu (paper) | tanh (section 3.1's comparison)
    removed_convs: list[str] = field(default_factory=list)  # [conv3] or [conv4]: section 7
    extra_conv6: bool = False        # Table 2's starred rows: a sixth conv layer after pool5


@dataclass
class OptimConfig:
    name: str = "paper_sgd"          # paper_sgd (the paper's rule) | sgd (torch.optim.SGD)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_biases: bool = True        # the paper is silent; cuda-convnet2 gave biases none


@dataclass
class ScheduleConfig:
    kind: str = "plateau"            # plateau | steps | constant
    epochs: int = 90
    factor: float = 0.1
    patience: int = 5                # epochs without improvement before a drop
    threshold: float = 0.1           # improvement in val top-1 error (points) that counts
    max_drops: int = 3
    milestones: list[int] = field(default_factory=list)  # epochs for kind=steps


@dataclass
class DataConfig:
    batch_size: int = 128            # global, split across DDP ranks
    val_batch_size: int = 256
    crop_size: int = 227
    workers: int = 6                 # loader processes per rank
    shuffle_buffer: int = 4096
    decode: str = "cpu"              # cpu (workers decode: libjpeg-turbo) | gpu (nvJPEG) | hybrid
    gpu_share: float = 0.25          # hybrid: the share of each batch decoded on the GPU
    steps_per_epoch: int = 0         # 0 = a full pass over the shards
    val_limit: int = 0               # 0 = every val image


@dataclass
class AugmentConfig:
    random_crop: bool = True
    flip: bool = True
    pca_std: float = 0.1             # alpha_i ~ N(0, pca_std)
    pca_scale: str = "sqrt_eigval"   # sqrt_eigval (author's code) | eigval (paper's text)
    mean: str = "image"              # image (paper) | rgb | none


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "fp32"          # fp32 (IEEE) | tf32 | bf16: repro/precision.py
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"    # torch.compile mode; reduce-overhead = CUDA graphs
    lrn_impl: str = "auto"           # auto | reference | fused | triton: the same function
    split_groups: bool = False       # grouped convs as one conv per group: the same function
    pad_input_channels: int = 0      # conv1's input zero-padded to this many channels (0: off)
    parallel: str = "ddp"            # ddp (also single process) | towers
    deterministic: bool = False
    log_every: int = 50


@dataclass
class CheckpointConfig:
    every_minutes: float = 30.0
    keep_last: int = 2


@dataclass
class LoggingConfig:
    wandb: str = "online"            # online | offline | disabled
    project: str = "alexnet-repro"
    entity: str = ""
    progress: str = "auto"           # auto (bar on a terminal, else lines) | bar | lines | off (no step lines)


class Sections:
    """A root of config sections (dataclasses): Config, or another experiment's."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class Config(Sections):
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


CHOICES = {
    "optim.name": ("paper_sgd", "sgd"),
    "schedule.kind": ("plateau", "steps", "constant"),
    "data.decode": ("cpu", "gpu", "hybrid"),
    "augment.pca_scale": ("sqrt_eigval", "eigval"),
    "augment.mean": ("image", "rgb", "none"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": PRECISIONS,
    "train.lrn_impl": LRN_IMPLS,
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune",
                           "max-autotune-no-cudagraphs"),
    "train.parallel": ("ddp", "towers"),
    "logging.wandb": ("online", "offline", "disabled"),
    "logging.progress": ("auto", "bar", "lines", "off"),
}
# The model section is AlexNet's arguments: repro.model_spec checks them (and
# data.crop_size, the model's input size).
POSITIVE = ("optim.lr", "schedule.epochs", "schedule.factor", "data.batch_size",
            "data.val_batch_size", "checkpoint.every_minutes", "checkpoint.keep_last",
            "train.log_every")
NON_NEGATIVE = ("optim.momentum", "optim.weight_decay", "schedule.patience", "schedule.threshold",
                "schedule.max_drops", "data.workers", "data.shuffle_buffer", "data.steps_per_epoch",
                "data.val_limit", "augment.pca_std", "train.pad_input_channels")


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2's booleans, true and false only: YAML 1.1 also reads on/off/yes/no as
    booleans, which would turn `logging.progress: off` into False."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


class DuplicateKey(yaml.constructor.ConstructorError):
    pass


def _construct_mapping(loader, node, deep=False):
    """A mapping that names a key twice is refused: YAML would keep the last value silently."""
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise DuplicateKey(problem=f"duplicate key '{key}' (lines {seen[key] + 1} and "
                                       f"{key_node.start_mark.line + 1}): YAML would keep only "
                                       f"the last value")
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                            lambda loader, node: _construct_mapping(loader, node))


def _yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def _check_type(value, tp, key: str, where: str):
    """Coerce `value` to the annotated type `tp` or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_check_type(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {value!r}")
    return value


def _apply(cfg: Config, key: str, value, where: str) -> None:
    section_name, _, name = key.partition(".")
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section_name not in sections or not name:
        raise ConfigError(f"{where}: unknown key '{key}' (sections: {', '.join(sorted(sections))})")
    section = getattr(cfg, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(f"{where}: unknown key '{key}' (known in {section_name}: "
                          f"{', '.join(fields)})")
    hints = typing.get_type_hints(type(section))
    setattr(section, name, _check_type(value, hints[name], key, where))


def _load_yaml(path: Path, cfg: Config, seen: tuple = ()) -> None:
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        doc = _yaml(path.read_text()) or {}
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = doc.pop("base", None)
    if base is not None:
        _load_yaml(_base_path(path, base), cfg, seen + (path,))
    for section_name, body in doc.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section '{section_name}' must be a mapping")
        for name, value in body.items():
            _apply(cfg, f"{section_name}.{name}", value, str(path))


def _base_path(path: Path, base) -> Path:
    """`base:` is relative to the file that names it, not to the working directory."""
    found = (path.parent / str(base)).resolve()
    if not found.is_file():
        cwd = Path(str(base)).resolve()
        hint = (f"; {cwd} exists: write it relative to {path.parent}" if cwd.is_file() else "")
        raise ConfigError(f"{path}: base file '{base}' not found at {found} (a base: path is "
                          f"relative to the file that names it, not to the working "
                          f"directory){hint}")
    return found


def parse_override(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return key.strip(), _yaml(raw) if raw.strip() else ""


def validate(cfg: Config, where: str) -> None:
    def get(key):
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    for key, options in CHOICES.items():
        if get(key) not in options:
            raise ConfigError(f"{where}: {key} = {get(key)!r} is not one of {', '.join(options)}")
    for key in POSITIVE:
        if not get(key) > 0:      # written so that NaN fails too
            raise ConfigError(f"{where}: {key} must be > 0, got {get(key)!r}")
    for key in NON_NEGATIVE:
        if not get(key) >= 0:
            raise ConfigError(f"{where}: {key} must be >= 0, got {get(key)!r}")
    for key in (*POSITIVE, *NON_NEGATIVE):
        if not math.isfinite(get(key)):
            raise ConfigError(f"{where}: {key} must be finite, got {get(key)!r}")
    if not cfg.optim.momentum < 1:
        raise ConfigError(f"{where}: optim.momentum must be in [0, 1) (the velocity would grow "
                          f"without bound), got {cfg.optim.momentum}")
    m, d = cfg.model, cfg.data
    if d.crop_size > IMAGE_SIZE:
        raise ConfigError(f"{where}: data.crop_size = {d.crop_size} is larger than the stored "
                          f"{IMAGE_SIZE}x{IMAGE_SIZE} shard images")
    if not 0 <= d.gpu_share <= 1:
        raise ConfigError(f"{where}: data.gpu_share must be in [0, 1], got {d.gpu_share}")
    if not 0 < cfg.schedule.factor < 1:
        raise ConfigError(f"{where}: schedule.factor must be in (0, 1), got {cfg.schedule.factor}")
    if cfg.schedule.kind == "steps" and not cfg.schedule.milestones:
        raise ConfigError(f"{where}: schedule.kind = steps needs schedule.milestones")
    try:
        check(**model_kwargs(cfg), name=_key)
        check_padding(cfg.train.pad_input_channels, m.in_channels, _key)
        if cfg.train.parallel == "towers":
            check_towers(m.groups, conv_layers(m.removed_convs, m.extra_conv6), _key)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _key(arg: str, *value) -> str:
    """A model rule's argument (repro.model_spec) as the config key that sets it, with its
    value if given: `model.dropout = 1.5`."""
    key = {"input_size": "data.crop_size", "pad_input_channels": "train.pad_input_channels",
           "parallel": "train.parallel"}.get(arg, f"model.{arg}")
    return f"{key} = {value[0]!r}" if value else key


def packaged_config(name: str) -> Path:
    """configs/NAME, which the package carries as repro.configs (pyproject.toml), so it is
    found in a checkout and in any install, editable or not. ".yaml" may be left off a
    file's name: "alexnet_paper", "ablations/no_lrn"; "ablations" is that folder."""
    path = Path(importlib.resources.files("repro.configs")) / name
    return path if path.suffix or path.is_dir() else path.with_suffix(".yaml")


def load_config(path: str | Path | None = None, overrides: list[str] = (), schema=Config):
    """The paper defaults, then the YAML at `path` (and its bases), then `overrides`.
    A `path` with no suffix that does not exist is a shipped config's name: "alexnet_paper".
    `schema`: the root dataclass (another experiment's, e.g. repro.cifar.train.CifarConfig,
    which checks itself in its `validate(where)`)."""
    cfg = schema()
    where = "defaults"
    if path is not None:
        path = Path(path)
        if not path.suffix and not path.exists():
            path = packaged_config(str(path))
        path = path.resolve()
        _load_yaml(path, cfg)
        where = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, key, value, f"command-line override '{text}'")
    if overrides:
        where += " + overrides " + " ".join(overrides)
    cfg.validate(where) if schema is not Config else validate(cfg, where)
    return cfg


def model_kwargs(cfg: Config) -> dict:
    """Keyword arguments for repro.model.build_model: the model section plus the crop size."""
    return dataclasses.asdict(cfg.model) | {"input_size": cfg.data.crop_size}


def config_from_dict(doc: dict, where: str = "checkpoint") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    cfg = Config()
    if not isinstance(doc, dict) or not all(isinstance(b, dict) for b in doc.values()):
        raise ConfigError(f"{where}: its config is not a mapping of sections")
    for section_name, body in doc.items():
        for name, value in body.items():
            _apply(cfg, f"{section_name}.{name}", value, where)
    validate(cfg, where)
    return cfg


# What a resumed run may change: how it runs (devices, speed switches, loader, logging,
# checkpointing) and how long. Everything else (model, optimizer, schedule, augmentation,
# batch, seed) defines the run; changing it mid-run would make the records untrue.
MAY_CHANGE_ON_RESUME = ("schedule.epochs", "data.workers", "data.decode", "data.gpu_share",
                        "data.val_batch_size", "data.val_limit", "data.steps_per_epoch",
                        "data.shuffle_buffer", "train.",
                        "checkpoint.", "logging.")
KEPT_ON_RESUME = ("train.seed",)


def resume_changes(saved: dict, now: dict) -> list[str]:
    """'key: saved -> now' for each setting a resumed run may not change; a setting that
    only one side has is a change too ('missing' on the other)."""
    missing = object()
    changes = []
    for section, name in dict.fromkeys((s, n) for doc in (now, saved) for s, body in doc.items()
                                       for n in body):
        key = f"{section}.{name}"
        if key not in KEPT_ON_RESUME and key.startswith(MAY_CHANGE_ON_RESUME):
            continue
        old, new = (doc.get(section, {}).get(name, missing) for doc in (saved, now))
        if old != new:
            old, new = ("missing" if v is missing else repr(v) for v in (old, new))
            changes.append(f"{key}: {old} -> {new}")
    return changes
