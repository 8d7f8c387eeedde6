"""The paper's optimiser (section 5): SGD with momentum and weight decay.

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

paper_update is that rule as the paper writes it, one tensor at a time: the reference
that PaperSGD, the fast form that training uses, is tested against.

The learning rate sits inside the velocity. torch.optim.SGD keeps it outside,
    u <- momentum * u + grad + weight_decay * w;   w <- w - lr * u,
which is the same update with v = -lr * u while lr is constant; after an lr
change, torch's velocity is rescaled by the new lr at once, the paper's carries
the old lr's steps and decays them by momentum. PaperSGD is torch's SGD with
that difference removed: when a group's lr changes from lr_old to lr_new, its
momentum buffers are first multiplied by lr_old / lr_new, so v = -lr * u holds
exactly. So it runs torch's fused SGD kernel: one pass over weights, gradients
and buffers per step, where the update written out in foreach ops takes four.
"""

import torch
from torch import nn


def paper_update(w: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, lr: float,
                 momentum: float, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's update rule (section 5), as it writes it:

        v_{i+1} := 0.9·v_i − 0.0005·ε·w_i − ε·⟨∂L/∂w|_{w_i}⟩_{D_i}
        w_{i+1} := w_i + v_{i+1}

    with ε = lr, 0.9 = momentum, 0.0005 = weight_decay, and grad = ⟨∂L/∂w|_{w_i}⟩_{D_i},
    the gradient at w_i averaged over the batch D_i. Returns (w_{i+1}, v_{i+1}), new
    tensors. The reference that PaperSGD is tested against (tests/test_optim.py); training
    does not use it: one tensor at a time, unfused."""
    v_next = momentum * v - weight_decay * lr * w - lr * grad
    w_next = w + v_next
    return w_next, v_next


class PaperSGD(torch.optim.SGD):
    """paper_update's rule on torch's SGD kernels (the fused one by default). lr, momentum and
    weight_decay are read from param_groups at every step, so lr schedulers and manual
    changes apply; lr must stay > 0 (the velocity is kept in units of lr). fused=None:
    torch's fused kernel when every parameter is a floating-point CPU or CUDA tensor and
    foreach is not given. The state is torch SGD's "momentum_buffer" u (v = -lr * u) and,
    in each group, "buffer_lr", the lr the buffers are expressed in.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=5e-4, *, foreach=None, fused=None):
        if lr <= 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"PaperSGD needs lr > 0, momentum >= 0, weight_decay >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}")
        params = [dict(g, params=_as_tensors(g["params"])) if isinstance(g, dict) else g
                  for g in _as_tensors(params)]
        if fused is None and foreach is None:    # torch picks foreach; the fused kernel is faster
            fused = all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                        for g in params for t in (g["params"] if isinstance(g, dict) else [g]))
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         foreach=foreach, fused=fused or None)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, held = group["lr"], group.get("buffer_lr")
            if lr <= 0:
                raise ValueError(f"PaperSGD: lr must stay > 0 (the paper's velocity is kept "
                                 f"as -lr times torch's momentum buffer), got {lr}")
            if held is not None and held != lr:   # keep v = -lr * u: v carries the old lr
                buffers = [self.state[p]["momentum_buffer"] for p in group["params"]
                           if self.state.get(p, {}).get("momentum_buffer") is not None]
                if buffers:
                    torch._foreach_mul_(buffers, held / lr)
            if group["momentum"]:
                # torch's fused kernel takes a group's buffers all or none: a parameter
                # whose first gradient comes late starts from the paper's v = 0.
                for p in group["params"]:
                    if p.grad is not None and self.state.get(p, {}).get("momentum_buffer") is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        loss = super().step(closure)
        for group in self.param_groups:
            group["buffer_lr"] = group["lr"]
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # A buffer saved from a run in the other memory format (train.channels_last may change
        # on resume) must take its parameter's strides: the fused kernel indexes both alike.
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state.get(p, {}).get("momentum_buffer")
                if buf is not None and buf.stride() != p.stride():
                    self.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)


def _as_tensors(params) -> list:
    return [params] if isinstance(params, torch.Tensor) else list(params)


def param_groups(model: nn.Module, weight_decay: float, decay_biases: bool) -> list[dict]:
    """Optimizer parameter groups. The paper decays every weight; the author's
    cuda-convnet2 gave biases (1-D parameters) no weight decay: decay_biases=False.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_biases:
        return [{"params": params, "weight_decay": weight_decay}]
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
