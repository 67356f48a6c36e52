"""Layers the backbones share."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pruning import STAConfig, Stage, stage_keep_indices
from .base import ModelCard


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2: the transformer MLP of VideoMAE and Video Swin (same key names in our layout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class StaScoring(nn.Module):
    """STA's token scoring at one stage as a module call: the similarity feature (`metric()`), then
    the indices to keep (`pruning.stage_keep_indices`). No parameters, and the same ops as calling
    the functions directly: being a module only gives tools a clean place to hook, e.g. `sta profile`
    times it with forward hooks (runtime.measure.scoring_timer) and a benchmark can swap it for a
    fixed selection."""

    def forward(
        self,
        metric: Callable[[], torch.Tensor],
        x: torch.Tensor,
        positions: torch.Tensor,
        stage: Stage,
        sta: STAConfig,
        stage_index: int,
        grid_hw: tuple[int, int],
    ) -> torch.Tensor:  # x (B, N, C), positions (B, N) -> kept indices into N (B, N - drops)
        return stage_keep_indices(x, metric(), positions, stage, sta, stage_index, grid_hw)


class PrunedClassifier(nn.Module):
    """The interface every backbone offers: subclasses define `forward_tokens(x) -> (pooled (B, D),
    kept positions per STA stage)`, a `head`, `plan_stages(STAConfig) -> list[Stage]` (behind
    `set_sta`), `tokens_per_stage`, `pruning_grid` (the (t, h, w) token grid where STA starts) and
    `kept_grids` (per STA stage, the grid its kept positions index). After `forward`,
    `kept_positions` holds the original token indices each stage kept, (B, tokens) each. `card` (a
    ModelCard: labels, preprocessing, family, source, provenance) is attached by the builder,
    models.build_from_source."""

    kept_positions: list[torch.Tensor]
    card: ModelCard | None = None

    def set_sta(self, sta: STAConfig) -> None:
        """Change the pruning settings: `stages` becomes the model's plan for `sta` (a StaError, and
        nothing changed, when the settings do not fit its token grids)."""
        self.stages = self.plan_stages(sta)
        self.sta = sta
        self._stage_at = {s.block: i for i, s in enumerate(self.stages)}

    def _card(self) -> ModelCard:
        if self.card is None:
            raise AttributeError(f"this {type(self).__name__} has no ModelCard (models.build_from_source attaches one)")
        return self.card

    @property
    def labels(self) -> list[str]:
        """Class names in index order (the card's)."""
        return self._card().labels

    @property
    def preprocessing(self) -> dict:
        """How clips are sampled and normalised (the card's)."""
        return self._card().preprocessing

    @property
    def family(self) -> str:
        """The backbone family (the card's)."""
        return self._card().family

    def forward_with_positions(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pooled, kept = self.forward_tokens(pixel_values)
        return self.head(pooled), kept

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits, self.kept_positions = self.forward_with_positions(pixel_values)
        return logits
