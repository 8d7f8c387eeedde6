"""The paper's optimiser (section 5): SGD with momentum and weight decay.

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

The learning rate sits inside the velocity. torch.optim.SGD keeps lr outside
(v <- momentum * v + grad + weight_decay * w;  w <- w - lr * v), which is the same
update while lr is constant; after an lr change, torch's velocity is rescaled by the
new lr at once, the paper's carries the old lr's steps and decays them by momentum.
"""

import torch
from torch import nn


class PaperSGD(torch.optim.Optimizer):
    """The update rule above. lr, momentum and weight_decay are read from
    param_groups at every step, so lr schedulers and manual changes apply.
    foreach=None uses the vectorised torch._foreach ops where torch has them.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=5e-4, *, foreach=None):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.foreach = hasattr(torch, "_foreach_add_") if foreach is None else foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("PaperSGD does not support sparse gradients")
            grads = [p.grad for p in params]
            velocities = [self._velocity(p) for p in params]
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            if self.foreach:
                torch._foreach_mul_(velocities, momentum)
                torch._foreach_add_(velocities, params, alpha=-decay * lr)
                torch._foreach_add_(velocities, grads, alpha=-lr)
                torch._foreach_add_(params, velocities)
            else:
                for p, g, v in zip(params, grads, velocities):
                    v.mul_(momentum).add_(p, alpha=-decay * lr).add_(g, alpha=-lr)
                    p.add_(v)
        return loss

    def _velocity(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["velocity"]


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
