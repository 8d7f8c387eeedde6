"""`repro train`'s task for the training loop (repro.train): the paper's recipe (section 5)
on ImageNet shards, on 1..N processes.

Data: the shards' train split in the order repro.data.order fixes from (seed, epoch,
rank), cut and normalised as repro.augment says; validation on the val split's centre
crops, fed as `repro eval` feeds them. Model: the config's AlexNet, placed by
repro.placement (DDP, the paper's two towers, compiled). Schedule: the plateau rule.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from data_prep.manifest import STATS
import repro.train as loop
from repro import checkpoint, distributed, preempt
from repro.augment import step_generator
from repro.config import Config, ConfigError
from repro.data.batch import empty_batch
from repro.data.loader import device_loader
from repro.data.order import EpochPlan, in_order
from repro.data.shards import Shard, data_fingerprint, read_manifest, split_shards
from repro.distributed import DistContext
from repro.metrics import topk_correct
from repro.exits import Refused
from repro.placement import make_normalizer, place_model
from repro.schedule import Schedule
from repro.step import build_optimizer


class ImageNetTask(loop.Task):
    """The shards at `data_dir` and the config's AlexNet, on this process's device."""

    def __init__(self, cfg: Config, data_dir: str | Path, dist: DistContext,
                 device: torch.device, allow_other_shards: bool = False):
        data_dir = Path(data_dir)
        if cfg.model.in_channels != 3:
            raise ConfigError(f"model.in_channels = {cfg.model.in_channels}, but the shards hold "
                              f"RGB images: repro train needs 3 (the greyscale d2l variant "
                              f"trains with python -m repro.d2l)")
        if cfg.data.batch_size % dist.world:
            raise Refused(f"data.batch_size = {cfg.data.batch_size} is not divisible by the "
                          f"world size {dist.world}")
        self.cfg, self.data_dir, self.dist, self.device = cfg, data_dir, dist, device
        self.allow_other_shards = allow_other_shards
        self.init: dict | None = None       # plan_init's record: fine-tuning from a checkpoint
        manifest = read_manifest(data_dir)
        self.classes = manifest["classes"]
        # before the slow start-up: stats.npz checked against the manifest
        self.data_path = data_dir.resolve()
        self.data = {"data": manifest["settings"]["data"], **data_fingerprint(data_dir)}
        if len(self.classes) != cfg.model.num_classes:
            raise Refused(f"{data_dir}/manifest.json has {len(self.classes)} classes but "
                          f"model.num_classes = {cfg.model.num_classes}; set "
                          f"model.num_classes={len(self.classes)}")
        self.train_shards = split_shards(data_dir, "train")
        self.val_shards = split_shards(data_dir, "val")
        self.placed = place_model(cfg, device, dist)
        self.optimizer = build_optimizer(cfg, self.placed.model)
        self.schedule = Schedule(cfg.schedule, cfg.optim.lr)
        self.normalizer = make_normalizer(cfg, data_dir / STATS, device)
        self.epochs, self.batch_size = cfg.schedule.epochs, cfg.data.batch_size
        self.log_every = cfg.train.log_every
        # What fixes the order of an epoch's samples (repro.data.order): a mid-epoch resume
        # is exact only if all of it is the same.
        self.val_name = "val, centre crop"            # what the val records measure
        self.stream = {"world": dist.world, "workers": max(1, cfg.data.workers),
                       "seed": cfg.train.seed, "batch_size": cfg.data.batch_size,
                       "shuffle_buffer": cfg.data.shuffle_buffer}

    def plan(self, epoch: int, skip: int = 0) -> EpochPlan:
        """This rank's share of a training epoch, past the `skip` steps already done."""
        return train_plan(self.cfg, self.train_shards, epoch, self.dist, skip)

    def epoch_steps(self, epoch: int) -> int:
        return epoch_steps(self.cfg, self.plan(epoch))

    def batches(self, epoch: int, skip: int):
        cfg, dist, device = self.cfg, self.dist, self.device
        plan = self.plan(epoch, skip)
        loader = device_loader(plan, device)
        for step in range(skip, epoch_steps(cfg, plan)):
            # None: this rank's slice ran out; it still takes part in the step's all-reduces
            batch = next(loader, None) or empty_batch(cfg.data.crop_size)
            x, labels = self.normalizer.train_input(
                batch, step_generator(device, cfg.train.seed, epoch, step, dist.rank))
            yield x, labels, plan.global_batch_size(step)

    def validate(self, epoch: int, stop: preempt.StopFlag | None = None) -> dict | None:
        return validate(self.placed.net, self.cfg, self.val_shards, self.normalizer, self.dist,
                        self.device, self.placed.autocast(), stop)

    def state(self) -> dict:
        return {"classes": self.classes}

    def check_resume(self, state: dict, ckpt_path: Path) -> None:
        """Refuse a resume on shards with other classes (the labels would mean other things);
        on another shard set or other statistics unless allowed, when it goes on with a
        warning."""
        if state["classes"] != self.classes:
            raise Refused(f"{self.data_dir}/manifest.json lists other classes than the shards "
                          f"{ckpt_path} was trained on; resume on those shards")
        differ = [what for key, what in (("stats_sha256", "stats.npz (mean image and PCA)"),
                                         ("manifest_sha256", "manifest.json (shard set)"))
                  if state["data"][key] != self.data[key]]
        if not differ:
            return
        text = f"{ckpt_path} was trained on shards with another {' and another '.join(differ)}"
        if not self.allow_other_shards:
            raise Refused(f"{text} than {self.data_dir}; resume on those shards, or pass "
                          f"--allow-other-shards to go on with these")
        if self.dist.is_main:
            print(f"warning: {text}; going on with {self.data_dir} (--allow-other-shards)",
                  file=sys.stderr, flush=True)

    def describe(self) -> list[str]:
        t, d = self.cfg.train, self.cfg.data
        n_train, n_val = (sum(s.count for s in shards) for shards in (self.train_shards, self.val_shards))
        return [
            f"  precision {t.precision}; channels_last {t.channels_last}, compile "
            f"{t.compile_mode if t.compile else False}, LRN {t.lrn_impl}, split_groups "
            f"{t.split_groups}, pad_input_channels {t.pad_input_channels}, deterministic "
            f"{t.deterministic}; JPEG decode {d.decode}, loader workers {max(1, d.workers)} a process",
            f"  data: {self.data_dir}: {self.data['data']} shards, {n_train} train images, {n_val} val images"
            f"{f' (validating on the first {d.val_limit})' if d.val_limit else ''}, "
            f"{len(self.classes)} classes",
        ]

    def next_steps(self, ckpt: Path) -> list[str]:
        return [f"evaluate it with ten crops: repro eval --checkpoint {ckpt} --data "
                f"{self.data_dir} --ten-crop"]

    def plan_init(self, path: Path) -> None:
        """Fine-tuning (section 6), checked before anything is written: which layers of the
        checkpoint at `path` this run starts from. A layer is copied when its weights have
        the same shape here, and fc8 (the classifier) only when both were trained on the
        same class list (same WNIDs, same order), not merely as many classes. Refused
        unless every conv layer both nets have is copied."""
        if path.is_dir():
            raise Refused(f"--init-from {path} is a directory; give a checkpoint file, "
                          f"e.g. {path / 'checkpoints' / 'best.pt'}")
        source = checkpoint.load(path, keys=("model",))
        state = self.placed.model.state_dict()
        same_classes = source.get("classes") == self.classes
        fits = [k for k, v in state.items() if k in source["model"]
                and source["model"][k].shape == v.shape and (same_classes or not k.startswith("fc8."))]
        copied = [n for n in _layers(state) if all(k in fits for k in state if k.startswith(n + "."))]
        convs = [n for n in _layers(state) if n.startswith("conv") and n in _layers(source["model"])]
        if not convs or not set(convs) <= set(copied):
            unfit = [n for n in convs if n not in copied] or ["it has none of them"]
            raise Refused(f"--init-from {path}: its conv layers do not fit this model "
                          f"({', '.join(unfit)}); {', '.join(copied) or 'no layer'} would be "
                          f"copied; fine-tuning needs at least the conv layers")
        self.init = {"event": "init_from", "checkpoint": str(path), "copied": copied,
                     "initialised": [n for n in _layers(state) if n not in copied],
                     "unused": [n for n in _layers(source["model"]) if n not in copied],
                     "same_classes": same_classes, "source_data": source.get("data"),
                     "normalised_with": "these shards' stats.npz (mean image and PCA)"}
        self.init_weights = {k: source["model"][k] for k in fits}

    def start(self) -> list[dict]:
        """A new run: the planned layers copied in (fine-tuning), if any."""
        return [self.init_from()] if self.init else []

    def init_from(self) -> dict:
        """Copy the planned layers into a new run's model; print and return the record."""
        state = self.placed.model.state_dict()
        self.placed.model.load_state_dict(state | self.init_weights)
        r = self.init
        if self.dist.is_main:
            print(f"init from {r['checkpoint']}: {', '.join(r['copied'])} copied; "
                  f"{', '.join(r['initialised']) or 'no layer'} freshly initialised"
                  f"{'' if r['same_classes'] else ' (another class list: fc8 is not copied)'}; "
                  f"{', '.join(r['unused']) or 'no layer'} of it unused; inputs normalised with "
                  f"{self.data_dir}'s mean image and PCA, not the source's", flush=True)
        return r


def _layers(keys) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys})

def train_plan(cfg: Config, shards: list[Shard], epoch: int, dist: DistContext = DistContext(),
               skip: int = 0) -> EpochPlan:
    """This rank's share of a training epoch, past the `skip` steps already done."""
    return EpochPlan(shards=tuple(shards), epoch=epoch, seed=cfg.train.seed, rank=dist.rank,
                     world=dist.world, batch_size=cfg.data.batch_size // dist.world,
                     workers=max(1, cfg.data.workers),
                     crop="random" if cfg.augment.random_crop else "center",
                     crop_size=cfg.data.crop_size, flip=cfg.augment.flip, shuffle=True,
                     shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip,
                     decode=cfg.data.decode, gpu_share=cfg.data.gpu_share)


def epoch_steps(cfg: Config, plan: EpochPlan) -> int:
    """Steps an epoch: a full pass, or data.steps_per_epoch if fewer."""
    return min(plan.steps, cfg.data.steps_per_epoch or plan.steps)


@torch.no_grad()
def validate(net, cfg: Config, shards, normalizer, dist: DistContext, device,
             autocast, stop: preempt.StopFlag | None = None) -> dict | None:
    """Centre-crop top-1/top-5 error over the val split (each rank its slice), the model
    fed as `repro eval` feeds it (Normalizer.eval_input). With `stop`: None as soon as a
    stop signal has come to any rank (all ranks agree before each batch)."""
    plan = in_order(shards, cfg.data.val_batch_size, max(1, cfg.data.workers),
                    cfg.data.val_limit, dist.rank, dist.world, cfg.data.decode, cfg.data.gpu_share)
    batches, totals = device_loader(plan, device), np.zeros(3)
    net.eval()
    try:
        for _ in range(plan.steps):        # as many on every rank; a short rank's last are None
            if stop is not None and distributed.any_rank(stop.raised, dist, device):
                return None
            batch = next(batches, None)
            if batch is None:
                continue
            x = normalizer.eval_input(batch.device_images(device), cfg.data.crop_size)
            with autocast:
                logits = net(x)
            c1, c5 = topk_correct(logits.float(), batch.labels.to(device), (1, 5))
            totals += (c1, c5, len(batch.labels))
    finally:
        net.train()
    c1, c5, n = distributed.all_sum(totals.tolist(), dist, device)
    return {"top1_err": 100 * (1 - c1 / n), "top5_err": 100 * (1 - c5 / n), "n": int(n)}


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path,
          init_from: str | Path | None = None, allow_other_shards: bool = False,
          stop: preempt.StopFlag | None = None) -> int:
    """`repro train`: train (or resume) into run_dir; returns the process exit status.
    init_from: a new run starts from that checkpoint's weights where they fit
    (fine-tuning, section 6). allow_other_shards: resume on shards whose manifest or
    stats.npz differ from the checkpoint's."""
    def make(dist, device):
        task = ImageNetTask(cfg, data_dir, dist, device, allow_other_shards)
        if init_from and checkpoint.latest(Path(run_dir)) is None:   # a resume ignores it
            task.plan_init(Path(init_from))
        return task

    return loop.train(make, cfg, run_dir, stop=stop)
