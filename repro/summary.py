"""Per-layer output shapes, parameter counts and forward MACs, from a real forward pass."""

import torch
from torch import nn

from repro.lrn import LocalResponseNorm

# One row per call of these; ReLU, dropout and identities change no shape and cost no MACs.
ROW_TYPES = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, LocalResponseNorm, nn.LocalResponseNorm)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        # out_h * out_w * out_c * (in_c / groups) * kh * kw; weight is (out_c, in_c/groups, kh, kw)
        return out[0].numel() * module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def layer_summary(model: nn.Module, input_size: int = 227, in_channels: int = 3) -> list[dict]:
    """Rows {name, type, out_shape (C, H, W) or (F,), params, macs} in forward order (batch 1)."""
    rows, handles = [], []

    def record(name):
        def hook(module, inputs, out):
            rows.append({"name": name, "type": type(module).__name__, "out_shape": tuple(out.shape[1:]),
                         "params": sum(p.numel() for p in module.parameters(recurse=False)),
                         "macs": _macs(module, out)})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, ROW_TYPES):
            handles.append(module.register_forward_hook(record(name)))
    first = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, in_channels, input_size, input_size, dtype=first.dtype, device=first.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of the rows, with total parameters and total GMACs."""
    lines = [f"{'layer':<8} {'type':<18} {'output':>14} {'params':>12} {'MACs':>14}"]
    for r in rows:
        shape = "x".join(str(d) for d in r["out_shape"])
        lines.append(f"{r['name']:<8} {r['type']:<18} {shape:>14} {r['params']:>12,} {r['macs']:>14,}")
    # A module called twice gives two rows but owns its parameters once.
    params = sum({r["name"]: r["params"] for r in rows}.values())
    macs = sum(r["macs"] for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(f"{'total':<8} {'':<18} {'':>14} {params:>12,} {macs / 1e9:>12.3f} G")
    return "\n".join(lines)
