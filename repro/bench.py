"""`repro bench`: throughput of each stage on whatever device is here, as a table + JSON.

(a) the training step alone on synthetic input, per precision/layout/compile
setting; (b) the loader alone; (c) end to end from shards (loader + device
augmentation + step); (d) 10-crop evaluation from the val shards, against the
forward pass at the training batch size; (e) a torchvision-reference-style
baseline loop (Pillow decode and transforms in DataLoader workers, fp32, eager,
torch SGD) on the same shards and model; (f, with --soak) host memory over a
long run. Each figure is images per second after a warm-up.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data_prep.atomic import write_json
from data_prep.manifest import STATS
from repro.augment import step_generator
from repro.cli import add_config_arguments
from repro.config import load_config, model_kwargs, packaged_config
from repro.data.loader import device_loader, loader
from repro.data.order import in_order
from repro.data.shards import read_manifest, split_shards
from repro.distributed import pick_device
from repro.model import build_model
from repro.placement import make_normalizer, place_model
from repro.imagenet import train_plan
from repro.step import build_optimizer, train_step

IMAGENET_TRAIN = 1_281_167
CONFIG = packaged_config("alexnet_paper")
# (cg, autotune) -> train.compile_mode
COMPILE_MODES = {(False, False): "default", (True, False): "reduce-overhead",
                 (False, True): "max-autotune-no-cudagraphs", (True, True): "max-autotune"}
TOKENS = {"fp32", "tf32", "bf16", "cl", "compile", "cg", "autotune", "nolrn", "ref", "fused", "triton", "gpudec", "cpu",
          "split", "pad4", "pad8"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, steps: int, device) -> float:
    """Seconds per call of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / steps


def model_and_opt(cfg, device):
    """The model as `repro train` places it (repro.placement.Placed) and its optimizer."""
    placed = place_model(cfg, device)
    return placed, build_optimizer(cfg, placed.model)


def synthetic_step(cfg, device):
    """One training step of the configured model on a fixed synthetic batch, as a callable."""
    placed, opt = model_and_opt(cfg, device)
    b, s = cfg.data.batch_size, cfg.data.crop_size
    x = torch.randn(b, 3, s, s, device=device) * 60
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.model.num_classes, (b,), device=device)
    autocast = placed.autocast()
    return lambda: train_step(placed.net, opt, x, y, 1, b, autocast)


def bench_step(cfg, device, warmup, steps) -> dict:
    step = synthetic_step(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = timed(step, warmup, steps, device)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": cfg.data.batch_size / t, "peak_gpu_gb": mem}


def profile_step(cfg, device, warmup: int, steps: int, top: int = 20) -> list[dict]:
    """Where a step's time goes: the `top` ops (CPU) or kernels (CUDA) by their own time,
    per step, over `steps` profiled steps after `warmup` unprofiled ones."""
    from torch.profiler import ProfilerActivity, profile

    step = synthetic_step(cfg, device)
    for _ in range(warmup):
        step()
    sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events = prof.key_averages()
    total = sum(own(e) for e in events) or 1.0
    ranked = sorted(events, key=own, reverse=True)[:top]
    return [{"name": e.key, "ms_per_step": own(e) / 1000 / steps, "share": own(e) / total,
             "calls_per_step": e.count / steps} for e in ranked]


class Skip(Exception):
    """A stage that cannot run on this data or device (the message says why); the others go on."""


def throughput(batches, step, warmup: int, count: int, device,
               batch_key: str = "data.batch_size") -> float:
    """Images/s of step(batch) -> images, over `count` batches after `warmup` ones (worker
    start-up, compilation). Only full batches count: a last partial one has a new shape."""
    n, t, full, seen = 0, None, None, 0
    for i, batch in enumerate(batches):
        size = len(batch[1])
        full = full or size
        if size < full:
            break
        seen = i + 1
        if i == warmup:
            sync(device)
            n, t = 0, time.perf_counter()
        n += step(i, batch)
        if i + 1 == warmup + count:
            break
    sync(device)
    if t is None or n == 0:
        raise Skip(f"the shards give {seen} full batches of {full} here, fewer than the "
                   f"{warmup + 1} this stage needs ({warmup} to warm up, then 1 or more "
                   f"timed): lower {batch_key} or give more data")
    return n / (time.perf_counter() - t)


def bench_loader(cfg, shards, device, batches: int) -> dict:
    """Images/s delivered as uint8 crops on `device` (decoded there on the GPU path)."""
    plan = train_plan(cfg, shards, 0)

    def step(i, batch):
        batch.device_images(device)
        return len(batch.labels)
    return {"images_per_s": throughput(device_loader(plan, device), step, 5, batches, device)}


def bench_end_to_end(cfg, shards, stats, device, batches) -> dict:
    placed, opt = model_and_opt(cfg, device)
    norm = make_normalizer(cfg, stats, device)
    autocast = placed.autocast()
    plan = train_plan(cfg, shards, 0)

    def step(i, batch):
        x, labels = norm.train_input(batch, step_generator(device, 0, 0, i))
        train_step(placed.net, opt, x, labels, 1, len(labels), autocast)
        return len(labels)
    return {"images_per_s": throughput(device_loader(plan, device), step, 5, batches, device)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def bench_soak(cfg, shards, stats, device, steps: int) -> dict:
    """Host memory of the training process over `steps` end-to-end steps (new epochs,
    new loader workers, as in training): resident set size sampled every 10% of the way."""
    placed, opt = model_and_opt(cfg, device)
    norm = make_normalizer(cfg, stats, device)
    samples, step, epoch, t = [], 0, 0, time.perf_counter()
    while step < steps:
        plan = train_plan(cfg, shards, epoch)
        for batch in device_loader(plan, device):
            x, labels = norm.train_input(batch, step_generator(device, 0, epoch, step))
            train_step(placed.net, opt, x, labels, 1, len(labels))
            step += 1
            if step % max(1, steps // 10) == 0:
                samples.append((step, round(rss_mb(), 1)))
            if step == steps:
                break
        epoch += 1
    growth = samples[-1][1] - samples[0][1]
    return {"images_per_s": steps * cfg.data.batch_size / (time.perf_counter() - t),
            "rss_mb": samples, "epochs": epoch, "rss_growth_mb_after_first_tenth": growth}


@torch.no_grad()
def bench_eval(cfg, shards_dir, stats, device, batches) -> dict:
    """10-crop evaluation from the val shards (all 10 crops of a batch of
    data.val_batch_size images in one forward), against the forward pass of a training
    batch (data.batch_size crops, no autograd: the strictest yardstick); images/s of each."""
    from repro.evaluate import Member

    member = Member(Path("bench"), cfg, place_model(cfg, device, training=False), None,
                    make_normalizer(cfg, stats, device, training=False))
    b, s = cfg.data.batch_size, cfg.data.crop_size
    x = (torch.randn(b, 3, s, s, device=device) * 60).contiguous(
        memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)

    def forward():
        with member.placed.autocast():
            member.model(x)
    forward_ips = b / timed(forward, 5, 20, device)
    plan = in_order(split_shards(shards_dir, "val"), cfg.data.val_batch_size,
                    max(1, cfg.data.workers))                        # repro eval's path

    def step(i, batch):
        member.probs(batch.device_images(device), ten_crop=True)
        return len(batch.labels)
    ips = throughput(loader(plan, pin_memory=device.type == "cuda"), step, 2, batches, device,
                     "data.val_batch_size")
    return {"images_per_s": ips, "forward_images_per_s": forward_ips,
            "cost_vs_10_forwards": forward_ips / (10 * ips)}


def bench_baseline(cfg, shards_dir, device, workers, batches) -> dict:
    """The torchvision reference recipe's shape: PIL decode + transforms in workers, fp32."""
    import webdataset as wds
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(cfg.data.crop_size), T.RandomHorizontalFlip(), T.PILToTensor(),
                    T.ConvertImageDtype(torch.float32),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    urls = [s.path for s in split_shards(shards_dir, "train")]
    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
          .decode("pil").to_tuple("jpg", "cls").map_tuple(tf, lambda c: int(c)))
    dl = torch.utils.data.DataLoader(ds.batched(cfg.data.batch_size), batch_size=None,
                                     num_workers=workers, pin_memory=device.type == "cuda")
    # The reference's plain model: none of repro.placement's switches.
    model = build_model(model_kwargs(cfg)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # The reference scripts keep PyTorch's defaults: TF32 convolutions, IEEE fp32 matmuls.
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"

    def step(i, batch):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(y)
    return {"images_per_s": throughput(dl, step, 5, batches, device)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repro bench", description=__doc__)
    add_arguments(p)
    return p


def add_arguments(p) -> None:
    add_config_arguments(p, default=CONFIG)
    p.add_argument("--data", help="shard directory (built by data_prep); stages b-e need it")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--steps", type=int, default=100, help="timed steps per synthetic variant")
    p.add_argument("--batches", type=int, default=100, help="timed batches for data stages")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="loader workers")
    p.add_argument("--variants", default="fp32,bf16,bf16+cl,bf16+cl+compile",
                   help="synthetic step variants, comma-separated; each joins tokens with +: "
                        "fp32|tf32|bf16, cl (channels_last), compile, cg (with compile: CUDA "
                        "graphs), autotune (with compile: max-autotune), "
                        "nolrn, ref|fused|triton (LRN), gpudec (GPU JPEG decode), split (grouped "
                        "convs per group), pad4|pad8 (conv1's input padded to 4 or 8 channels)")
    p.add_argument("--loaders", default="cpu,gpudec",
                   help="loader variants (gpudec: GPU decode; hybridNN: NN%% on the GPU)")
    p.add_argument("--end-to-end", default="bf16+cl+compile,bf16+cl+compile+gpudec",
                   help="end-to-end variants")
    p.add_argument("--stages", default="abcde",
                   help="which of stages a-e to run (f runs when --soak is given); b-e need --data")
    p.add_argument("--soak", type=int, default=0,
                   help="also run N end-to-end steps and report host memory (RSS) over them (f)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS synthetic steps of the last --variants entry and "
                        "print the ops/kernels that take the most time")
    p.add_argument("--json", default="bench.json", help="where to write the results")


def variant_tokens(variant: str) -> set[str]:
    tokens = set(variant.split("+")) - {""}
    unknown = {t for t in tokens - TOKENS if not re.fullmatch(r"hybrid\d\d", t)}
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown {sorted(unknown)}; tokens are "
                         f"{sorted(TOKENS)} and hybridNN")
    return tokens


def variant_config(variant: str, args, extra=()):
    """The config of a variant: tokens joined by '+': fp32|tf32|bf16 (repro.precision), cl
    (channels_last), compile, nolrn, ref|fused|triton (LRN implementation), gpudec (GPU JPEG
    decode), hybridNN (NN% of each batch decoded on the GPU, the rest by the loader
    workers), cg (with compile: CUDA graphs, compile mode reduce-overhead), autotune (with
    compile: max-autotune, without CUDA graphs unless cg too), split (train.split_groups),
    pad4|pad8 (train.pad_input_channels)."""
    tokens = variant_tokens(variant)
    hybrid = next((t for t in tokens if re.fullmatch(r"hybrid\d\d", t)), None)
    impl = next((t for t in ("ref", "fused", "triton") if t in tokens), "auto")
    pad = next((int(t[3:]) for t in tokens if t in ("pad4", "pad8")), 0)
    decode = (["data.decode=hybrid", f"data.gpu_share={int(hybrid[6:]) / 100}"] if hybrid
              else [f"data.decode={'gpu' if 'gpudec' in tokens else 'cpu'}"])
    cfg = load_config(args.config, [*args.overrides, f"data.workers={args.workers}", *extra,
                               f"train.lrn_impl={'reference' if impl == 'ref' else impl}",
                               *decode,
                               f"train.compile_mode={COMPILE_MODES['cg' in tokens, 'autotune' in tokens]}",
                               f"train.split_groups={'split' in tokens}",
                               f"train.pad_input_channels={pad}"])
    cfg.train.precision = next((t for t in ("bf16", "tf32") if t in tokens), "fp32")
    cfg.train.channels_last, cfg.train.compile = "cl" in tokens, "compile" in tokens
    if "nolrn" in tokens:
        cfg.model.lrn = "none"
    return cfg


class Table:
    """The result rows, each printed and written to the JSON file as it comes, so that
    what was measured is kept whatever a later stage does; and the stages skipped, why."""

    def __init__(self, path: str | Path, info: dict):
        self.path, self.info, self.rows, self.skipped = Path(path), info, [], []

    def measure(self, stage: str, variant: str, fn) -> dict | None:
        """Run one stage variant; a Skip is printed and recorded, and the bench goes on."""
        try:
            result = fn()
        except Skip as e:
            self.skipped.append({"stage": stage, "variant": variant, "reason": str(e)})
            self.write()
            print(f"{stage:<24} {variant:<22} skipped: {e}", flush=True)
            return None
        self.add(stage, variant, result)
        return result

    def add(self, stage: str, variant: str, result: dict) -> None:
        self.rows.append({"stage": stage, "variant": variant, **result})
        self.write()                   # on disk before it is printed
        ips = result["images_per_s"]
        epochs = "" if stage.startswith("d") else f"   90 epochs: {IMAGENET_TRAIN * 90 / ips / 3600:6.1f} h"
        print(f"{stage:<24} {variant:<22} {ips:>10.0f} img/s{epochs}"
              + (f"   peak {result['peak_gpu_gb']:.2f} GB" if result.get("peak_gpu_gb") else ""),
              flush=True)

    def write(self) -> None:
        write_json(self.path, {**self.info, "results": self.rows, "skipped": self.skipped})


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    stages = set(args.stages)
    if stages - set("abcde"):
        p.error(f"--stages: letters from abcde, got {args.stages!r}")
    if stages - {"a"} and not args.data:
        p.error(f"stages {''.join(sorted(stages - {'a'}))} need --data")
    try:                          # every variant checked before the first is run
        for v in ",".join((args.variants, args.loaders, args.end_to_end)).split(","):
            variant_tokens(v)
    except ValueError as e:
        p.error(str(e))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "argv": sys.argv, "profile": []}
    table = Table(args.json, info)
    if "a" in stages:
        for v in args.variants.split(","):
            table.measure("a: step (synthetic)", v,
                          lambda: bench_step(variant_config(v, args), device, 10, args.steps))
    if args.profile:
        print_profile(args, device, table)
    if args.data:
        data_stages(args, stages, device, table)
    table.write()
    skipped = f" ({len(table.skipped)} skipped: see above)" if table.skipped else ""
    print(f"wrote {args.json}: {len(table.rows)} results{skipped}")
    return 0


def print_profile(args, device, table: Table) -> None:
    v = args.variants.split(",")[-1]
    profile = profile_step(variant_config(v, args), device, 10, args.profile)
    table.info["profile"] = profile
    table.write()
    print(f"profile of {v}, per step ({'kernels' if device.type == 'cuda' else 'ops'}, own time):")
    for e in profile:
        print(f"  {e['ms_per_step']:8.3f} ms {100 * e['share']:5.1f}%  "
              f"{e['calls_per_step']:5.1f}x  {e['name'][:90]}")


def data_stages(args, stages: set, device, table: Table) -> None:
    """Stages b-f, on the shards in --data."""
    classes = [f"model.num_classes={len(read_manifest(args.data)['classes'])}"]

    def config(variant: str):
        return variant_config(variant, args, classes)
    shards = split_shards(args.data, "train")
    stats = Path(args.data) / STATS
    for v in args.loaders.split(",") if "b" in stages else []:
        table.measure("b: loader", v, lambda: bench_loader(config(v), shards, device, args.batches))
    for v in args.end_to_end.split(",") if "c" in stages else []:
        table.measure("c: end to end", v,
                      lambda: bench_end_to_end(config(v), shards, stats, device, args.batches))
    if args.soak:
        result = table.measure("f: soak (host memory)", f"{args.soak} steps",
                               lambda: bench_soak(config(""), shards, stats, device, args.soak))
        if result:
            print(f"RSS (MB) by step: {result['rss_mb']}; growth after the first tenth: "
                  f"{result['rss_growth_mb_after_first_tenth']:+.1f} MB over {result['epochs']} "
                  f"epochs")
    if "d" in stages:
        v = args.end_to_end.split(",")[0]
        result = table.measure("d: 10-crop eval", v, lambda: bench_eval(
            config(v), args.data, stats, device, args.batches))
        if result:
            print(f"10-crop eval per image = {result['cost_vs_10_forwards']:.2f} x 10 forward "
                  f"passes (forward of a training batch alone "
                  f"{result['forward_images_per_s']:.0f} img/s; target: at most 1.00)")
    if "e" in stages:
        base = table.measure("e: baseline (reference)", "fp32 eager, PIL", lambda: bench_baseline(
            config(""), args.data, device, args.workers, args.batches))
        ends = [r["images_per_s"] for r in table.rows if r["stage"] == "c: end to end"]
        if ends and base:
            table.rows[-1]["speedup_of_best_c"] = max(ends) / base["images_per_s"]
            print(f"best end to end / baseline: {table.rows[-1]['speedup_of_best_c']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
