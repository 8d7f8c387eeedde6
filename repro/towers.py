"""Two-tower model parallelism: the paper's two-GPU layout (section 3.2, Figure 2).

Tower t (t = 0, 1) holds half the kernels of every layer on devices[t]: output
channels [0, C/2) of conv1..conv5 and rows [0, 2048) of fc6/fc7 on tower 0, the
other half on tower 1. Activations cross devices only where the paper's do:

    conv1  reads the image                      (each tower its own copy)
    conv2  reads its own tower's pool1          (grouped, no transfer)
    conv3  reads BOTH towers' pool2             (transfer)
    conv4  reads its own tower's conv3          (grouped, no transfer)
    conv5  reads its own tower's conv4          (grouped, no transfer)
    fc6    each tower: half the neurons, from BOTH towers' pool5   (transfer)
    fc7    each tower: half the neurons, from BOTH towers' fc6     (transfer)
    fc8    one layer on devices[0], from BOTH towers' fc7          (transfer)

fc8 is not split: Figure 2 draws the 1000-way layer as one block fed by both
GPUs, it is 7% of the parameters, and keeping it whole avoids a final gather
(and splitting an odd class count).

The weights layout is the single-device AlexNet's: `state_dict()` has exactly
AlexNet's keys and shapes (each tensor is the two towers' halves concatenated
along dim 0), and `load_state_dict()` takes an AlexNet state_dict, so a
checkpoint moves freely between train.parallel = ddp and towers.
`single_optimizer_state` / `load_single_optimizer_state` do the same for the
optimizer (PaperSGD or torch SGD; any per-parameter state shaped like the
parameter is concatenated / split the same way).

LRN. In cuda-convnet2's two-GPU config each GPU has its own rnorm layer over its
own 48 (128) maps (rnorm1a/rnorm1b), so the n=5 window never crosses the tower
boundary; repro.model's two-group AlexNet does the same (LocalResponseNorm with
groups=2), and so does TowerAlexNet: each tower normalises its own maps, no transfer.

Dropout is applied to the full 4096-wide fc6/fc7 activations on devices[0] by the
model's own nn.Dropout modules, so with the same RNG state the masks are the single
model's; the dropped activations are then sent to the other tower (the same
transfer fc7/fc8 need anyway). In eval mode the halves are exchanged directly.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from repro.lrn import LocalResponseNorm
from repro.model import AlexNet
from repro.model_spec import CONVS, check_towers
from repro.precision import autocast_for

SPLIT = (*CONVS, "fc6", "fc7")   # layers whose output units are split between the towers
WHOLE = ("fc8",)                 # on devices[0], reading both towers


def _attr(key: str) -> str:
    return key.replace(".", "_")


class TowerAlexNet(nn.Module):
    """`model`'s weights split over two devices, computed as the paper's two GPUs did.

    The wrapper copies the weights: after construction it owns the live parameters
    (train it, then `state_dict()` or `to_single()`); `model` is left untouched.
    """

    def __init__(self, model: AlexNet, devices=("cuda:0", "cuda:1")):
        super().__init__()
        if not isinstance(model, AlexNet):
            raise TypeError(f"TowerAlexNet wraps a repro.model.AlexNet, got {type(model).__name__}")
        check_towers(model.conv2.groups, model.convs)
        if len(devices) != 2:
            raise ValueError(f"devices must be two devices (they may be equal), got {devices!r}")
        self.devices = tuple(torch.device(d) for d in devices)
        # A parameterless copy of the model: conv hyper-parameters, LRN, pooling and
        # dropout modules, and the skeleton that to_single() fills.
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                for p in model.parameters()}
        skeleton = copy.deepcopy(model, memo)
        object.__setattr__(self, "_skeleton", skeleton)  # not a submodule: no state_dict keys
        for name in ("pool1", "pool2", "pool5", "drop6", "drop7"):
            setattr(self, name, getattr(skeleton, name))
        # LRN: applied to each tower's maps alone (groups=1 there), as rnorm1a/rnorm1b; the
        # model's groups=2 LRN over both towers' maps is the same function.
        for name in ("norm1", "norm2"):
            norm = copy.deepcopy(getattr(skeleton, name))
            for module in norm.modules():        # the LRN alone, or after a tanh
                if isinstance(module, LocalResponseNorm):
                    module.groups = 1
            setattr(self, name, norm)
        self.train(model.training)

        self._parts: dict[str, list[nn.Parameter]] = {}   # "conv1.weight" -> [tower 0, tower 1]
        self._origin: dict[int, str] = {}                  # id(tower param) -> "conv1.weight"
        for name in (*SPLIT, *WHOLE):
            for kind in ("weight", "bias"):
                key = f"{name}.{kind}"
                original = getattr(model, name).get_parameter(kind)
                full = original.detach()
                if name in WHOLE:
                    pieces = [full.to(self.devices[0], copy=True)]
                else:
                    if full.shape[0] % 2:
                        raise ValueError(f"{key} has {full.shape[0]} output units: not divisible by 2")
                    pieces = [half.to(dev, copy=True) for half, dev in zip(full.chunk(2, 0), self.devices)]
                parts = []
                for t, piece in enumerate(pieces):
                    p = nn.Parameter(piece, requires_grad=original.requires_grad)
                    self.register_parameter(f"{_attr(key)}_{t}", p)
                    self._origin[id(p)] = key
                    parts.append(p)
                self._parts[key] = parts

    # ---- weights layout ------------------------------------------------------
    def parts(self, key: str) -> list[nn.Parameter]:
        """The tower pieces of AlexNet parameter `key` ("fc6.weight"), tower 0 first."""
        return self._parts[key]

    def single_key(self, param: nn.Parameter) -> str:
        return self._origin[id(param)]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, parts in self._parts.items():
            full = torch.cat([p.detach().to(self.devices[0]) for p in parts]) if len(parts) > 1 \
                else parts[0].detach()
            destination[prefix + key] = full

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key, parts in self._parts.items():
            if prefix + key not in state_dict:
                missing_keys.append(prefix + key)
                continue
            value = state_dict[prefix + key]
            shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
            if tuple(value.shape) != shape:
                error_msgs.append(f"size mismatch for {prefix + key}: copying a param with shape "
                                  f"{tuple(value.shape)}, the model has {shape}")
                continue
            with torch.no_grad():
                for p, piece in zip(parts, value.split([p.shape[0] for p in parts])):
                    p.copy_(piece)
        if strict:
            children = set(self._modules)
            for key in state_dict:
                if key.startswith(prefix):
                    rest = key[len(prefix):]
                    if rest not in self._parts and rest.split(".", 1)[0] not in children:
                        unexpected_keys.append(key)

    def to_single(self, device=None) -> AlexNet:
        """A fresh single-device AlexNet holding the current weights (on `device`, default devices[0])."""
        model = copy.deepcopy(self._skeleton).to_empty(device=device or self.devices[0])
        model.load_state_dict(self.state_dict())
        return model.train(self.training)

    # ---- forward ---------------------------------------------------------------
    def _w(self, name: str, t: int):
        return self._parts[f"{name}.weight"][t], self._parts[f"{name}.bias"][t]

    def _conv(self, x, name: str, t: int):
        conv = getattr(self._skeleton, name)
        w, b = self._w(name, t)
        return F.conv2d(x, w, b, conv.stride, conv.padding)

    def _both(self, xs, t: int, dim: int = 1):
        """Both towers' tensors, concatenated on tower t's device."""
        return torch.cat([x.to(self.devices[t]) for x in xs], dim)

    def _dropout(self, drop: nn.Dropout, xs):
        """Each tower's copy of the full dropped activations (masks drawn on devices[0])."""
        if self.training and drop.p > 0:
            full = drop(self._both(xs, 0))
            return [full, full.to(self.devices[1])]
        return [self._both(xs, 0), self._both(xs, 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self._conv(x.to(d), "conv1", t) for t, d in enumerate(self.devices)]
        xs = [self.pool1(self.norm1(y)) for y in xs]
        xs = [self._conv(y, "conv2", t) for t, y in enumerate(xs)]
        xs = [self.pool2(self.norm2(y)) for y in xs]
        act = self._skeleton.act                     # ReLU, or tanh (section 3.1)
        xs = [act(self._conv(self._both(xs, t), "conv3", t)) for t in range(2)]      # crosses
        xs = [act(self._conv(y, "conv4", t)) for t, y in enumerate(xs)]
        xs = [self.pool5(act(self._conv(y, "conv5", t))) for t, y in enumerate(xs)]
        # flatten(cat(channels)) == cat(flatten): channel-major, as AlexNet.forward flattens
        flat = [self._both([torch.flatten(y, 1) for y in xs], t) for t in range(2)]  # crosses
        xs = [act(F.linear(flat[t], *self._w("fc6", t))) for t in range(2)]
        full = self._dropout(self.drop6, xs)                                         # crosses
        xs = [act(F.linear(full[t], *self._w("fc7", t))) for t in range(2)]
        full = self._dropout(self.drop7, xs)                                         # crosses
        return F.linear(full[0], *self._w("fc8", 0))   # logits on devices[0]


def single_optimizer_state(optimizer: torch.optim.Optimizer, towers: TowerAlexNet) -> dict:
    """The state_dict that the same optimizer over the single-device AlexNet (built with the same
    param_groups call) would have: tower pieces concatenated along dim 0, on devices[0]."""
    sd = optimizer.state_dict()
    index, groups, state = {}, [], {}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    for group, saved in zip(optimizer.param_groups, sd["param_groups"]):
        keys = list(dict.fromkeys(towers.single_key(p) for p in group["params"]))
        for key in keys:
            index[key] = len(index)
        groups.append({**{k: v for k, v in saved.items() if k != "params"},
                       "params": [index[k] for k in keys]})
    position = {id(p): i for i, p in enumerate(flat)}
    for key, i in index.items():
        pieces = [sd["state"].get(position[id(p)]) for p in towers.parts(key)]
        if any(s is None for s in pieces):
            continue
        merged = {}
        for name, value in pieces[0].items():
            part0 = towers.parts(key)[0]
            if torch.is_tensor(value) and value.shape == part0.shape and len(pieces) > 1:
                merged[name] = torch.cat([s[name].to(towers.devices[0]) for s in pieces])
            else:
                merged[name] = value
        state[i] = merged
    return {"state": state, "param_groups": groups}


def load_single_optimizer_state(optimizer: torch.optim.Optimizer, towers: TowerAlexNet, single: dict) -> None:
    """Load a single-device AlexNet optimizer state_dict (see single_optimizer_state) into
    `optimizer`, which was built over `towers`' parameters with the same param_groups call."""
    if len(single["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"the saved optimizer has {len(single['param_groups'])} parameter groups, "
                         f"this one {len(optimizer.param_groups)}")
    groups, state, position = [], {}, 0
    for group, saved in zip(optimizer.param_groups, single["param_groups"]):
        keys = list(dict.fromkeys(towers.single_key(p) for p in group["params"]))
        if len(keys) != len(saved["params"]):
            raise ValueError(f"a saved parameter group has {len(saved['params'])} tensors, the "
                             f"towers' group covers {len(keys)}")
        single_index = dict(zip(keys, saved["params"]))
        ids = []
        for p in group["params"]:
            key = towers.single_key(p)
            parts = towers.parts(key)
            s = single["state"].get(single_index[key])
            if s is not None:
                t = next(i for i, q in enumerate(parts) if q is p)
                sizes = [q.shape[0] for q in parts]
                full_shape = (sum(sizes), *parts[0].shape[1:])
                state[position] = {
                    name: (value.split(sizes)[t] if len(parts) > 1 and tuple(value.shape) == full_shape
                           else value).clone() if torch.is_tensor(value) else value
                    for name, value in s.items()}
            ids.append(position)
            position += 1
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_towers(model: AlexNet, device0, device1, batch: int, *, steps: int = 20, warmup: int = 5,
                 input_size: int = 227, bf16: bool = False, lr: float = 0.01) -> float:
    """Training throughput (images/s) of TowerAlexNet(model) on (device0, device1): forward,
    backward and a PaperSGD step on random input, after `warmup` untimed steps."""
    from repro.optim import PaperSGD

    net = TowerAlexNet(model, (device0, device1))
    net.train()
    opt = PaperSGD(net.parameters(), lr=lr)
    d0 = net.devices[0]
    x = torch.randn(batch, model.conv1.in_channels, input_size, input_size, device=d0)
    y = torch.randint(0, model.fc8.out_features, (batch,), device=d0)
    autocast = autocast_for("bf16" if bf16 else "fp32", d0)

    def step():
        with autocast:
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    for d in set(net.devices):
        _sync(d)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    for d in set(net.devices):
        _sync(d)
    return steps * batch / (time.perf_counter() - t0)


def parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m repro.towers",
                                description="training img/s of the paper's two towers")
    p.add_argument("--batch", type=int, default=128)
    return p


if __name__ == "__main__":   # python -m repro.towers [--batch B]: towers' training img/s
    batch = parser().parse_args().batch
    d0 = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    d1 = torch.device("cuda:1") if torch.cuda.device_count() > 1 else d0
    torch.backends.cudnn.benchmark = True
    for bf16 in (False, True):
        ips = bench_towers(AlexNet(seed=0), d0, d1, batch, bf16=bf16)
        print(f"towers on ({d0}, {d1}), batch {batch}, {'bf16' if bf16 else 'fp32'}: {ips:.0f} img/s")
