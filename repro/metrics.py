"""Top-k accuracy counts: the paper's top-1 and top-5 (section 1), for training and
evaluation alike."""
from __future__ import annotations

import torch


def ranked_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k highest-scoring classes, best first (all of them if there are fewer
    than k), and where the label is among them: (top (N, k) indices, hits (N, k) bool)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return top, top == labels[:, None]


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of rows whose label is among the k highest scores, for each k."""
    if scores.shape[0] == 0:
        return [0 for _ in ks]
    _, hits = ranked_hits(scores, labels, max(ks))
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]
