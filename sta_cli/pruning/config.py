"""STA settings: what the user chooses, validated once, and the per-stage plan derived from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import StaError

FIRST_GROUP = ("tome", "random", "grid")
ORDERS = ("fbf", "bfb", "fff", "bbb")
SCHEDULES = ("decreasing", "constant", "increasing")
SIMILARITIES = ("key", "query", "value", "feature")
SCORES = ("sta", "temporal", "semantic", "random")

# Tokens dropped per original frame at stages 1, 2, 3, as multiples of r1 (paper Sec. 4.1 and
# Table 6d). A stage-s group spans 2**s frames, so the per-group drop is r1 * mult * 2**s:
# "decreasing" drops r1 per group at every stage, exactly as the reference code does.
_SCHEDULE_PER_FRAME = {
    "decreasing": (1.0, 0.5, 0.25),
    "constant": (1.0, 1.0, 1.0),
    "increasing": (1.0, 2.0, 4.0),
}


@dataclass(frozen=True)
class STAConfig:
    """How STA prunes. The defaults reproduce the reference code (docs/algorithm.md §Reference defaults)."""

    r1: int = 0
    first_group: str = "tome"  # image-style drop on the first visited group
    seed: int = 0  # for first_group = random | grid
    order: str = "fbf"  # visiting order per stage: f = first-to-last, b = last-to-first
    schedule: str = "decreasing"
    similarity: str = "key"  # feature behind the token-to-token affinity
    score: str = "sta"  # sta = temporal * (1 - semantic); or one factor alone; random = baseline

    @classmethod
    def random_baseline(cls, r1: int, seed: int = 0) -> STAConfig:
        """Same token counts, tokens chosen at random (the paper's Fig. 5 baseline)."""
        return cls(r1=r1, first_group="random", score="random", seed=seed)

    def __post_init__(self):
        for name, allowed in (
            ("first_group", FIRST_GROUP),
            ("order", ORDERS),
            ("schedule", SCHEDULES),
            ("similarity", SIMILARITIES),
            ("score", SCORES),
        ):
            if getattr(self, name) not in allowed:
                raise StaError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.r1, bool) or not isinstance(self.r1, int) or self.r1 < 0:
            raise StaError(f"r1 must be a non-negative integer, got {self.r1!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise StaError(f"seed must be an integer, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        return self.r1 > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> STAConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class Stage:
    """One pruning step: after `block`, split the tokens into `groups` runs and drop `drop` per run."""

    block: int
    groups: int
    drop: int
    backward: bool  # visit groups last-to-first
    tokens_in: int
    tokens_out: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "tokens_out", self.tokens_in - self.groups * self.drop)


def plan_stages(cfg: STAConfig, depth: int, n_t: int, n_s: int) -> list[Stage]:
    """The three pruning stages for a columnar ViT with `depth` blocks and n_t x n_s tokens.

    Raises StaError when r1 or the token grid does not allow STA.
    """
    if not cfg.enabled:
        return []
    if n_t % 4 != 0:
        raise StaError(f"STA needs a number of temporal slices divisible by 4, this model has {n_t}")
    if cfg.r1 > n_s // 2:
        raise StaError(f"r1 must be between 0 and {n_s // 2} (half the {n_s} tokens per frame), got {cfg.r1}")
    if depth < 3:
        raise StaError(f"STA prunes after 3 distinct blocks; the model has only {depth}")
    blocks = (0, depth // 3, 2 * depth // 3)
    stages, tokens = [], n_t * n_s
    for s, (block, per_frame) in enumerate(zip(blocks, _SCHEDULE_PER_FRAME[cfg.schedule])):
        groups = n_t >> s
        drop = int(math.floor(cfg.r1 * per_frame * (1 << s) + 0.5))
        group_size = tokens // groups
        if drop >= group_size:
            raise StaError(
                f"r1={cfg.r1} with the {cfg.schedule} schedule drops {drop} of {group_size} tokens per group "
                f"at stage {s + 1}; choose a smaller r1"
            )
        stages.append(Stage(block, groups, drop, cfg.order[s] == "b", tokens))
        tokens = stages[-1].tokens_out
    return stages
