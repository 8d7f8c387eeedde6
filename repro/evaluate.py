"""Top-k error counting (and, with issue 5, 10-crop evaluation and ensembles)."""
from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of rows whose label is among the k highest scores, for each k."""
    if scores.shape[0] == 0:
        return [0 for _ in ks]
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]
