#!/usr/bin/env python3
"""One GPU session, prepared: every CUDA test, `repro bench`, the d2l experiment on the real
Fashion-MNIST, the CIFAR-10 nets' time per epoch and, in the time left, the learnability run,
all in one command inside the device tool's ten-minute limit (docs/gpu_session.md).

Each part runs under its own time limit (a hang costs that part, not the session); the moment
it ends, its result is appended to OUT/results.jsonl, its log and small output files to
OUT/parts.tar, and OUT/summary.txt is rewritten; a part that fails is marked and the next one
starts. The summary table is printed last. Before any part starts, the script checks all it
needs (the carried files, every import, a CUDA device) and names what is missing.

Here, once:  python tools/gpu_session.py --prepare
             (the wheels the GPU image lacks and the real Fashion-MNIST into .gpu_session/,
             ignored by git; about 31 MB of the 64 MiB a device call may carry)
There:       the device tool's run with command `python3 tools/gpu_session.py "$OUT"`,
             carry [".gpu_session"], timeout_s 600
Rehearsal:   python tools/gpu_session.py --dry-run OUT
             (this CPU, tiny sizes, the same command lines; tests/test_gpu_session.py)
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent
STASH = REPO / ".gpu_session"                 # what a device call carries (--prepare fills it)
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")     # Debian's dataset-fashion-mnist
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# What the GPU image lacks (the device's KINDS.md), at the versions tested here. wandb is
# missing too, but repro imports it only when a run's logging.wandb is on: every run here
# has it off (repro bench makes no run; the d2l, CIFAR and learnability configs disable it).
WHEELS = ("webdataset", "braceexpand")
DEVICE_PYTHON = "3.12"
FAST = "bf16+cl+compile"       # configs/alexnet_fast.yaml as `repro bench` tokens (LRN: auto)
SEEDS = ("seeds: loss 0.328-0.331, train acc 0.878-0.880, test acc 0.864-0.883; "
         "1,318.6 and 3,941.8 examples/s on their GPUs")
IMAGENET_TRAIN = 1_281_167
CIFAR_TRAIN = 50_000
BUDGET = 570                   # s: inside the device's 600 s a command, with time to pack up
LEARN_LEAST = 90               # s: compiling and one epoch; with less left it is skipped


# The command lines still changing (both will take --config NAME_OR_FILE plus
# section.key=value overrides, like `repro train`): one function each.
def d2l_command(root: Path, out: Path, overrides: tuple[str, ...]) -> list[str]:
    """d2l's AlexNet on Fashion-MNIST with the seeds' recipe (10 epochs), bar `overrides`."""
    return ["-m", "repro.d2l", "--config", "d2l_fashion_mnist", "--root", str(root),
            "--out", str(out), *overrides]


def cifar_command(experiment: str, root: Path, out: Path, epochs: int, batch: int,
                  generate: str | None) -> list[str]:
    """figure1: the 80sec net with ReLU, then tanh, at the params file's rates (no sweep);
    lrn: the 11pct net with and without its normalisation; each `epochs` epochs."""
    only = {"figure1": ["--lr-scales", "1", "--full"], "lrn": ["--drop-epochs", "0"]}
    return ["-m", "repro.cifar", experiment, "--root", str(root), "--out", str(out),
            "--epochs", str(epochs), *only[experiment],
            *(["--generate", generate] if generate else []),
            f"train.batch_size={batch}", "logging.progress=off"]


def cifar_epochs_needed() -> dict[str, int]:
    """Epochs each net trains in the full experiments, from repro.cifar's defaults: Figure 1's
    learning-rate sweep then at most --epochs, per neuron; section 3.3's schedule, per net."""
    from repro.cifar.experiments import parser
    from repro.cifar.nets import NETS
    fig = parser().parse_args(["figure1", "--root", "."])
    figure1, lrn = len(fig.lr_scales.split(",")) * fig.sweep_epochs + fig.epochs, sum(NETS["11pct"].schedule)
    return {"relu": figure1, "tanh": figure1, "with": lrn, "without": lrn}


@dataclass(frozen=True)
class Sizes:
    """How much each part does; the command lines are otherwise the same on the GPU and in
    the CPU rehearsal."""
    fixture: tuple[int, int, int]     # classes, train and val images a class
    workers: int                      # loader workers
    bench: tuple[str, ...]            # repro bench's --steps, --batches, config overrides
    d2l: tuple[str, ...]              # overrides of the seeds' recipe
    cifar: tuple[str, int, int]       # --generate N_TRAIN,N_TEST; epochs a net; batch size
    learn: tuple[str, ...]            # overrides of configs/learnability.yaml
    tests: tuple[str, ...]            # pytest's options besides -m gpu
    caps: dict                        # part -> its time limit, s (None: the budget's rest)


GPU = Sizes(fixture=(100, 80, 20), workers=15, bench=("--steps", "50", "--batches", "40"),
            d2l=(), cifar=(f"{CIFAR_TRAIN},10000", 2, 128), learn=(), tests=(),
            caps={"gpu-tests": 120, "shards": 200, "bench": 180, "d2l": 160, "cifar": 90,
                  "learnability": None})
TINY = Sizes(fixture=(3, 16, 8), workers=1,
             bench=("--steps", "1", "--batches", "1", "model.num_classes=3", "data.batch_size=4",
                    "data.val_batch_size=4", "data.crop_size=67"),
             d2l=("schedule.epochs=1", "data.steps_per_epoch=2", "data.val_limit=16",
                  "data.batch_size=8", "data.crop_size=67", "data.workers=0"),
             cifar=("16,4", 1, 8),
             learn=("model.num_classes=3", "schedule.epochs=1", "data.steps_per_epoch=2", "data.val_limit=8",
                    "data.batch_size=4", "data.val_batch_size=4", "data.crop_size=67",
                    "data.shuffle_buffer=16"),
             tests=("--collect-only",), caps=GPU.caps)
PARTS = ("gpu-tests", "shards", "bench", "d2l", "cifar", "learnability")
MODULES = ("torch", "torchvision", "numpy", "yaml", "tqdm", "scipy", "matplotlib", "PIL",
           "pytest", "webdataset", "repro.cli", "repro.bench", "repro.d2l",
           "repro.cifar.experiments", "data_prep.make_fixture", "data_prep.build_shards")
PROBE = """
import importlib, json, sys
missing, info = {}, {"python": sys.version.split()[0]}
for name in sys.argv[1].split(","):
    try:
        module = importlib.import_module(name)
        info[name] = getattr(module, "__version__", None) if "." not in name else None
    except Exception as e:
        missing[name] = f"{type(e).__name__}: {e}"
try:
    import torch
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception:
    info["cuda"] = None
print(json.dumps({"missing": missing, "info": {k: v for k, v in info.items() if v or k == "cuda"}}))
"""
RUNNING: set[subprocess.Popen] = set()


def run_command(args: list[str], log, timeout: float, env: dict) -> int | None:
    """args' exit status (its output into log), or None if it ran past `timeout` s: then its
    whole process group, loader workers and all, is ended."""
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                            start_new_session=True)
    RUNNING.add(proc)
    try:
        return proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        end(proc)
        return None
    finally:
        RUNNING.discard(proc)


def end(proc: subprocess.Popen) -> None:
    """TERM to the process group; 10 s later, KILL to whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:                                    # loader workers outlive their parent's TERM
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


class Session:
    """The parts in order, each under its time limit, recorded as it ends."""

    def __init__(self, out: Path, work: Path, stash: Path, dry: bool, budget: float):
        self.out, self.stash, self.dry = out, stash, dry
        self.sizes = TINY if dry else GPU
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.data = work / ("data-tiny" if dry else "data")   # kept for a rerun on one machine
        self.runs = work / time.strftime("runs-%Y%m%d-%H%M%S")  # fresh: a run dir would resume
        self.site = work / "site"                              # the carried wheels, installed
        self.py = sys.executable
        self.rows: dict[str, dict] = {}
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True)
        for name in ("results.jsonl", "parts.tar", "summary.txt"):
            (out / name).unlink(missing_ok=True)
        env = {"PYTHONUNBUFFERED": "1"}
        if dry:   # the CPU, and no torch.compile: minutes on 2 cores, the same code path eagerly
            env |= {"CUDA_VISIBLE_DEVICES": "", "TORCH_COMPILE_DISABLE": "1"}
        self.env = os.environ | env
        self.path([REPO])

    def path(self, dirs: list[Path]) -> None:
        """Put dirs first on the children's (and this process's) import path."""
        old = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env["PYTHONPATH"] = os.pathsep.join([*map(str, dirs), *old])
        sys.path[:0] = [str(d) for d in dirs]

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def record(self, row: dict, part_dir: Path | None) -> None:
        """results.jsonl, parts.tar (the part's files under 2 MB, not its checkpoints or
        lock files) and summary.txt."""
        with self.lock:
            self.rows[row["part"]] = row
            with open(self.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if part_dir is not None and part_dir.is_dir():
                with tarfile.open(self.out / "parts.tar", "a") as tar:
                    for f in sorted(part_dir.rglob("*")):
                        if (f.is_file() and f.stat().st_size < 2 << 20
                                and "checkpoints" not in f.relative_to(part_dir).parts
                                and not f.name.startswith(".")):
                            tar.add(f, arcname=str(f.relative_to(self.runs)))
            (self.out / "summary.txt").write_text(self.table())
        reason = f": {row['reason']}" if row.get("reason") else ""
        print(f"[{self.elapsed():4.0f} s] {row['part']} {row['status']} "
              f"({row['seconds']:.0f} s){reason}", flush=True)

    def part(self, name: str, commands, summarise=None, needs=(), skip_reason=None,
             least: float = 15) -> dict:
        """Run commands() (argument lists for self.py, built when the part starts) in turn
        under the part's time limit; record the outcome and summarise()'s result."""
        begin = time.monotonic()
        cap, left = self.sizes.caps[name], self.deadline - begin
        limit = left if cap is None else min(cap, left)
        part_dir = self.runs / name
        part_dir.mkdir()
        row = {"part": name, "status": "ok", "reason": ""}
        blocked = [n for n in needs if self.rows.get(n, {}).get("status") != "ok"]
        if blocked:
            row |= {"status": "skipped", "reason": f"needs {', '.join(blocked)}, which did not succeed"}
        elif limit < least:
            row |= {"status": "skipped", "reason": f"{max(left, 0):.0f} s of the budget left"}
        else:
            row |= self.execute(commands, part_dir, begin + limit, cap if cap and cap <= left else None)
            if row["status"] == "ok" and skip_reason:
                row |= {"status": "skipped", "reason": skip_reason}
            if summarise is not None:
                try:
                    row["result"], row["summary"] = summarise(part_dir)
                except Exception as e:  # noqa: BLE001 - the part's own outcome stands
                    row["summary"] = [f"no result: {type(e).__name__}: {e}"]
        row["seconds"] = round(time.monotonic() - begin, 1)
        self.record(row, part_dir)
        return row

    def execute(self, commands, part_dir: Path, until: float, cap: float | None) -> dict:
        """Run the part's commands until one fails or `until`: its cap, or the budget's end."""
        log_path = part_dir / "log.txt"
        with open(log_path, "w") as log:
            try:
                argvs = commands(part_dir)
            except Exception as e:  # noqa: BLE001 - a part's preparation failing is its failure
                return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            for argv in argvs:
                log.write(f"$ python {' '.join(argv)}\n")
                log.flush()
                rc = run_command([self.py, *argv], log, until - time.monotonic(), self.env)
                if rc is None:
                    return ({"status": "timed out", "reason": f"ended at its {cap:.0f} s limit"}
                            if cap else
                            {"status": "stopped", "reason": "ended with the session's time budget"})
                if rc:
                    log.flush()
                    return {"status": "failed", "reason": f"exit {rc}: {last_line(log_path)}"}
        return {}

    # --- before any part -------------------------------------------------------------------
    def preflight(self) -> bool:
        """Install the carried wheels; check the carried files, every import and (on the GPU)
        a CUDA device; record what is there and what is missing, with the fix."""
        begin, missing, notes = time.monotonic(), {}, []
        wheels = sorted((self.stash / "wheels").glob("*.whl"))
        if wheels:
            done = subprocess.run([self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                   "--no-compile", "--no-cache-dir", "--upgrade", "--disable-pip-version-check",
                                   "--target", str(self.site), *map(str, wheels)],
                                  capture_output=True, text=True)
            if done.returncode:
                missing["wheels"] = f"pip install failed: {done.stderr.strip()[-300:]}"
            self.path([self.site])
            notes.append("wheels " + ", ".join(w.name.split("-py")[0] for w in wheels))
        fix = f"run `python tools/gpu_session.py --prepare` where they are, and carry {self.stash.name}"
        for name in FASHION_FILES:
            if not (self.stash / "fashion-mnist" / name).is_file():
                missing[f"fashion-mnist/{name}"] = f"not in {self.stash}: {fix}"
        modules = MODULES + (() if self.dry else ("triton",))
        done = subprocess.run([self.py, "-c", PROBE, ",".join(modules)], capture_output=True,
                              text=True, cwd=REPO, env=self.env)
        try:
            probe = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            probe = {"missing": {"python": f"the import check failed: {done.stderr.strip()[-300:]}"},
                     "info": {}}
        for name, error in probe["missing"].items():
            missing[name] = error + (f" ({fix})" if name in WHEELS else "")
        info = probe["info"]
        if not self.dry and not info.get("cuda"):
            missing["CUDA device"] = ("torch.cuda.is_available() is False here; on a machine "
                                      "without a GPU, rehearse with --dry-run")
        if shutil.which("nvidia-smi") and not self.dry:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True)
            notes.append(f"nvidia-smi: {smi.stdout.strip()}")
        device = info.pop("cuda", None) or "CPU (rehearsal: CUDA hidden, torch.compile off)"
        summary = [device + "; " + ", ".join(f"{k} {v}" for k, v in info.items()), *notes]
        summary += [f"MISSING {name}: {why}" for name, why in missing.items()]
        row = {"part": "preflight", "status": "failed" if missing else "ok",
               "reason": f"{len(missing)} missing; no part started" if missing else "",
               "result": {"device": device, **info, "missing": missing}, "summary": summary,
               "seconds": round(time.monotonic() - begin, 1)}
        self.record(row, None)
        return not missing

    # --- the parts ----------------------------------------------------------------------
    def gpu_tests(self) -> dict:
        def commands(d):
            # A test module that cannot be imported there (a package the image lacks) costs
            # its own tests, not all of them.
            return [["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests",
                     "--continue-on-collection-errors", f"--junitxml={d / 'junit.xml'}",
                     *self.sizes.tests]]

        def summarise(d):
            if self.dry:
                n = re.search(r"(\d+)/\d+ tests? collected", (d / "log.txt").read_text())
                return {"collected": int(n[1]) if n else 0}, [f"{n[1] if n else 0} CUDA tests collected, none run"]
            suite = ElementTree.parse(d / "junit.xml").getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
            bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                   if c.find("failure") is not None or c.find("error") is not None]
            return n | {"not_passed": bad}, [
                f"{n['passed']} passed, {n['failures']} failed, {n['errors']} errors, "
                f"{n['skipped']} skipped", *(f"not passed: {b}" for b in bad[:10])]
        return self.part("gpu-tests", commands, summarise,
                         skip_reason="no CUDA device: collected only" if self.dry else None)

    def shards(self) -> dict:
        shards, src = self.data / "shards", self.data / "src"

        def commands(d):
            if (shards / "manifest.json").is_file():
                return []                                   # built by an earlier session here
            shutil.rmtree(src, ignore_errors=True)
            classes, train, val = self.sizes.fixture
            return [["-m", "data_prep.make_fixture", "--out", str(src), "--layout", "folder",
                     "--classes", str(classes), "--train-per-class", str(train),
                     "--val-per-class", str(val), "--seed", "1"],
                    ["-m", "data_prep.build_shards", "--source", str(src), "--out", str(shards),
                     "--progress", "off"]]

        def summarise(d):
            manifest = json.loads((shards / "manifest.json").read_text())
            n = {split: v["count"] for split, v in manifest["splits"].items()}
            return n | {"classes": len(manifest["classes"])}, [
                f"{n['train']:,} train, {n['val']:,} val images, {len(manifest['classes'])} "
                f"classes (generated, 256x256 JPEG shards via data_prep)"]
        return self.part("shards", commands, summarise)

    def bench(self) -> dict:
        def commands(d):
            return [["-m", "repro.bench", "--data", str(self.data / "shards"), "--stages", "acde",
                     "--workers", str(self.sizes.workers), "--variants", f"fp32,{FAST}",
                     "--end-to-end", FAST, "--json", str(d / "bench.json"), *self.sizes.bench]]

        def summarise(d):
            bench = json.loads((d / "bench.json").read_text())
            names = {"fp32": "fp32 (faithful)", FAST: f"{FAST} (alexnet_fast)"}
            lines = []
            for r in bench["results"]:
                ips, what = r["images_per_s"], f"{r['stage']:<24} {names.get(r['variant'], r['variant']):<28}"
                if r["stage"].startswith("d"):
                    lines.append(f"{what} {ips:>9,.0f} img/s   {r['cost_vs_10_forwards']:.2f} x 10 forwards")
                else:
                    lines.append(f"{what} {ips:>9,.0f} img/s   90 epochs {IMAGENET_TRAIN * 90 / ips / 3600:6.1f} h")
                if "speedup_of_best_c" in r:
                    lines.append(f"best end to end / baseline: {r['speedup_of_best_c']:.2f}x")
            lines += [f"{s['stage']} {s['variant']} skipped: {s['reason']}" for s in bench["skipped"]]
            return {"results": bench["results"], "skipped": bench["skipped"]}, lines
        return self.part("bench", commands, summarise, needs=("shards",))

    def d2l(self) -> dict:
        def commands(d):                  # --root reads the four .gz files where they are
            return [d2l_command(self.stash / "fashion-mnist", d / "run", self.sizes.d2l)]

        def summarise(d):
            from repro.d2l import summary      # d2l's own last lines, from its records

            rows = jsonl(d / "run" / "metrics.jsonl")
            epochs = sum(r["event"] == "val" for r in rows)
            done = any(r["event"] == "done" for r in rows)
            data = next(r["data"] for r in rows if r["event"] == "data")
            s = summary(d / "run")
            return {"epochs": epochs, "finished": done, "data": data, **s}, [
                f"{plural(epochs, 'epoch')}{'' if done else ' (unfinished)'} on {data} data: "
                f"loss {s['loss']:.3f}, train acc {s['train_acc']:.3f}, test acc "
                f"{s['test_acc']:.3f}; {s['examples_per_s']:,.1f} examples/s", SEEDS]
        return self.part("d2l", commands, summarise)

    def cifar(self) -> dict:
        root, (generate, epochs, batch) = self.data / "cifar", self.sizes.cifar

        def commands(d):
            fresh = not (root / "cifar-10-batches-py").is_dir()
            return [cifar_command("figure1", root, d, epochs, batch, generate if fresh else None),
                    cifar_command("lrn", root, d, epochs, batch, None)]

        def summarise(d):
            runs = {"relu": "figure1/relu", "tanh": "figure1/tanh", "with": "lrn/with",
                    "without": "lrn/without"}
            labels = {"relu": "80sec ReLU (Figure 1)", "tanh": "80sec tanh (Figure 1)",
                      "with": "11pct with its normalisation", "without": "11pct without"}
            needed, per_epoch, lines = cifar_epochs_needed(), {}, []
            for net, run in runs.items():
                last = [r for r in jsonl(d / run / "metrics.jsonl") if r["event"] == "val"][-1]
                per_epoch[net] = CIFAR_TRAIN / last["train_images_per_s"]   # the last (warm) epoch
                lines.append(f"{labels[net]:<30} {last['train_images_per_s']:>9,.0f} img/s   "
                             f"{per_epoch[net]:7.1f} s a {CIFAR_TRAIN:,}-image epoch")
            hours = {exp: sum(needed[n] * per_epoch[n] for n in nets) / 3600
                     for exp, nets in (("figure1", ("relu", "tanh")), ("lrn", ("with", "without")))}
            lines.append(f"Figure 1: {hours['figure1']:.2f} h at most ({needed['relu']} epochs a "
                         f"net, with the sweep); 13%/11%: {hours['lrn']:.2f} h "
                         f"({needed['with']} epochs a net)")
            return {"seconds_per_epoch": per_epoch, "epochs_needed": needed, "hours": hours}, lines
        return self.part("cifar", commands, summarise)

    def learnability(self) -> dict:
        def commands(d):
            return [["-m", "repro.cli", "train", "--config", "configs/learnability.yaml",
                     "--data", str(self.data / "shards"), "--out", str(d / "run"),
                     "train.precision=bf16", "train.channels_last=true", "train.compile=true",
                     f"data.workers={self.sizes.workers}", *self.sizes.learn]]

        def summarise(d):
            rows = jsonl(d / "run" / "metrics.jsonl")
            val = [round(r["top1_err"], 1) for r in rows if r["event"] == "val"]
            left = next((r["global_step"] for r in rows
                         if r["event"] == "train" and r["loss"] < 4.4), None)
            return {"val_top1_err": val, "first_step_below_4.4": left}, [
                f"{plural(len(val), 'epoch')}: val top-1 error {val} %; train loss first under 4.4 "
                f"(chance: ln 100 = 4.61) at step {left}"]
        return self.part("learnability", commands, summarise, needs=("shards",),
                         least=LEARN_LEAST)

    def table(self) -> str:
        order = ["preflight", *PARTS]
        lines = [f"{'part':<13} {'status':<10} {'time':>6}  result"]
        for row in sorted(self.rows.values(), key=lambda r: order.index(r["part"])):
            head = f"{row['part']:<13} {row['status']:<10} {row['seconds']:>5.0f}s  "
            detail = ([row["reason"]] if row.get("reason") else []) + row.get("summary", [])
            lines.append(head + (detail[0] if detail else ""))
            lines += [" " * len(head) + line for line in detail[1:]]
        return "\n".join(lines) + "\n"

    def run(self, parts: set[str]) -> int:
        if not self.preflight():
            print(self.table(), end="", flush=True)
            return 2
        # The shard set is CPU work: it is built while the CUDA tests run.
        shards = threading.Thread(target=self.shards, daemon=True)
        if parts & {"shards", "bench", "learnability"}:
            shards.start()
        steps = [("gpu-tests", self.gpu_tests), ("bench", self.bench), ("d2l", self.d2l),
                 ("cifar", self.cifar), ("learnability", self.learnability)]
        for name, step in steps:
            if name in parts:
                if name in ("bench", "learnability") and shards.is_alive():
                    shards.join()
                step()
        if shards.is_alive():
            shards.join()
        print(f"\nGPU session: {self.elapsed():.0f} s of the {self.deadline - self.start:.0f} s "
              f"budget; {self.out}/results.jsonl, parts.tar (logs, outputs), summary.txt",
              flush=True)
        print(self.table(), end="", flush=True)
        bad = [r for r in self.rows.values() if r["status"] in ("failed", "timed out")]
        return 1 if bad else 0


def prepare(stash: Path, fashion_mnist: Path) -> int:
    """Fill the stash a device call carries: the real Fashion-MNIST, and wheels of what the
    GPU image lacks at the versions installed here. Prints the sizes and the call."""
    missing = [n for n in FASHION_FILES if not (fashion_mnist / n).is_file()]
    if missing:
        raise SystemExit(f"{fashion_mnist} lacks {', '.join(missing)} (Debian: apt-get install "
                         f"dataset-fashion-mnist; or --fashion-mnist DIR)")
    stash.mkdir(exist_ok=True)
    (stash / ".gitignore").write_text("# what tools/gpu_session.py --prepare gathers; never committed\n*\n")
    (stash / "fashion-mnist").mkdir(exist_ok=True)
    for name in FASHION_FILES:
        shutil.copyfile(fashion_mnist / name, stash / "fashion-mnist" / name)
    wheels = stash / "wheels"
    wheels.mkdir(exist_ok=True)
    for name in WHEELS:
        version = importlib.metadata.version(name)
        for old in wheels.glob(f"{name}-*.whl"):          # one version of each, or pip refuses
            if not old.name.startswith(f"{name}-{version}-"):
                old.unlink()
        if not list(wheels.glob(f"{name}-{version}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--disable-pip-version-check", "--only-binary=:all:",
                            "--python-version", DEVICE_PYTHON, "--implementation", "cp",
                            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                            "-d", str(wheels), f"{name}=={version}"], check=True)
    files = sorted(f for f in stash.rglob("*") if f.is_file())
    for f in files:
        print(f"{f.stat().st_size:>12,}  {f.relative_to(stash.parent)}")
    total = sum(f.stat().st_size for f in files)
    print(f"{total:>12,}  in all ({total / 2**20:.1f} MiB of the 64 MiB a device call carries, "
          f"with the working tree)\nthe device call: command `python3 tools/gpu_session.py "
          f"\"$OUT\"`, carry [\"{stash.relative_to(REPO) if stash.is_relative_to(REPO) else stash}\"], "
          f"timeout_s 600")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_session.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="where results.jsonl, parts.tar and summary.txt go")
    p.add_argument("--prepare", action="store_true", help="fill the stash here, then stop")
    p.add_argument("--dry-run", action="store_true",
                   help="the CPU rehearsal: tiny sizes, CUDA hidden, the CUDA tests collected only")
    p.add_argument("--stash", type=Path, default=STASH, help=f"what travels (default {STASH.name}/)")
    p.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST,
                   help="with --prepare: the four *-ubyte.gz files (default: Debian's)")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-session"),
                   help="data and run directories (checkpoints: not under OUT)")
    p.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole session")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="which parts (bench and learnability bring shards along)")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(args.stash.resolve(), args.fashion_mnist)
    if not args.out:
        p.error("give OUT (on the device: \"$OUT\"), or --prepare")
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        p.error(f"--parts: unknown {sorted(parts - set(PARTS))}; parts are {', '.join(PARTS)}")
    session = Session(Path(args.out).resolve(), args.work.resolve(), args.stash.resolve(),
                      args.dry_run, args.budget)

    def stop(signum, frame):                     # the device's own limit: end the children too
        for proc in list(RUNNING):
            end(proc)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    return session.run(parts)


if __name__ == "__main__":
    sys.exit(main())
