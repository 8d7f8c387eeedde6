"""PaperSGD's step alone on AlexNet's 61M parameters (random gradients): ms per step.

    python tools/optim_bench.py [--device cuda] [--steps 20]

Run it against another checkout with PYTHONPATH=that/checkout to compare versions.
"""
import argparse
import time

import torch

from repro.config import load_config, model_kwargs
from repro.model import build_model
from repro.optim import PaperSGD, param_groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = build_model(model_kwargs(load_config("alexnet_paper"))).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = PaperSGD(param_groups(model, 5e-4, True), lr=0.01)
    best = float("inf")
    for i in range(args.steps + 3):
        opt.param_groups[0]["lr"] = 0.01 if i % 10 else 0.001   # an lr change every 10 steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            best = min(best, time.perf_counter() - t)
    kernel = "fused" if opt.param_groups[0].get("fused") else "foreach"
    print(f"PaperSGD step ({kernel}) on {device}: {1000 * best:.1f} ms (best of {args.steps})")


if __name__ == "__main__":
    main()
