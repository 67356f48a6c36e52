"""Reading predictions: agreement of two models, top labels, and the checks a result must pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ValidationFailed


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Agreement:
    """Pruned vs unpruned predictions, averaged over the batch. top5_overlap: the share of the
    unpruned top-5 (every class, for a model with fewer than 5) that the pruned top-5 holds too."""

    top1_agreement: float
    top5_overlap: float
    logit_cosine: float

    def rounded(self, digits: int = 5) -> Agreement:
        return Agreement(*(round(v, digits) for v in (self.top1_agreement, self.top5_overlap, self.logit_cosine)))


@dataclass(frozen=True)
class Label:
    """One class of a prediction: its name, index and probability."""

    label: str
    index: int
    prob: float


@torch.no_grad()
def compare(unpruned_logits: torch.Tensor, pruned_logits: torch.Tensor) -> Agreement:
    """Agreement of pruned with unpruned predictions (logits: (batch, classes)), averaged over the batch."""
    top1 = (unpruned_logits.argmax(-1) == pruned_logits.argmax(-1)).float().mean().item()
    k = min(5, unpruned_logits.shape[-1])
    a, b = unpruned_logits.topk(k, -1).indices, pruned_logits.topk(k, -1).indices
    overlap = (a[:, :, None] == b[:, None, :]).any(-1).float().mean().item()
    cosine = F.cosine_similarity(unpruned_logits.float(), pruned_logits.float(), dim=-1).mean().item()
    return Agreement(top1, overlap, cosine)


def top_labels(model: nn.Module, probs: torch.Tensor, k: int = 5) -> list[Label]:
    """The k most probable labels of one prediction (probs: (classes,))."""
    p, i = probs.float().topk(min(k, probs.numel()))
    return [Label(model.labels[j], int(j), float(q)) for q, j in zip(p.tolist(), i.tolist())]


def check_finite(model: nn.Module, logits: dict[str, torch.Tensor], clip_name: str) -> None:
    """Non-finite logits are a wrong answer, never a result: name the weights that cause them if any."""
    bad = [name for name, t in logits.items() if not torch.isfinite(t).all()]
    if not bad:
        return
    tensors = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    cause = (
        f"the weights hold NaN or inf ({tensors[0]}{' and more' if len(tensors) > 1 else ''})"
        if tensors
        else "overflow"
    )
    where = "the synthetic clip" if clip_name == "synthetic" else clip_name
    models = f"the {' and '.join(bad)} model{'s give' if len(bad) > 1 else ' gives'}"
    raise ValidationFailed(f"{models} non-finite logits (NaN or inf) on {where}: {cause}")
