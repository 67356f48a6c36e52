"""Layers the backbones share."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2: the transformer MLP of VideoMAE and Video Swin (same key names in our layout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PrunedClassifier(nn.Module):
    """The interface every backbone offers: subclasses define `forward_tokens(x) -> (pooled (B, D),
    kept positions per STA stage)`, a `head`, `set_sta(STAConfig)`, `stages`, `tokens_per_stage`,
    `pruning_grid` (the (t, h, w) token grid where STA starts) and `kept_grids` (per STA stage, the
    grid its kept positions index). After `forward`, `kept_positions` holds the original token
    indices each stage kept, (B, tokens) each."""

    kept_positions: list[torch.Tensor]

    def forward_with_positions(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pooled, kept = self.forward_tokens(pixel_values)
        return self.head(pooled), kept

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits, self.kept_positions = self.forward_with_positions(pixel_values)
        return logits
