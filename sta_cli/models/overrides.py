"""What the weights cannot tell: input size, frame count, head count and normalisation.

`ArchOverrides` carries the values a user gives explicitly (`--num-heads --image-size --num-frames
--mean --std`, or the same keywords of `sta_cli.load` / `sta_cli.prune`); it is passed down from
`io.checkpoints.resolve` to the builder (models/build.py) as a plain argument. `Provenance` records
where each value of a built model came from (its config, the weights, an option, or an assumption
for a released architecture), is printed on stderr when anything was not read from a config, and is
written into the artifact's config.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

from ..errors import StaError

log = logging.getLogger("sta_cli")

# Origins of a value, in the order a reader should trust them.
CONFIG, WEIGHTS, OPTION, ALIAS, KNOWN, ASSUMED = "config", "weights", "option", "alias", "known checkpoint", "assumed"


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise StaError(f"{name} must be a positive integer, got {value!r}")
    return value


def _triple(name: str, value, positive: bool) -> tuple[float, float, float]:
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise StaError(f"{name} must be three numbers (R, G, B), got {value!r}") from None
    if len(t) != 3 or not all(math.isfinite(v) for v in t) or (positive and min(t) <= 0):
        raise StaError(f"{name} must be three finite numbers (R, G, B){' above 0' if positive else ''}, got {value!r}")
    return t


@dataclass(frozen=True)
class ArchOverrides:
    """Architecture values given explicitly; None = not given (use the config, else a released default)."""

    num_heads: int | None = None
    image_size: int | None = None
    num_frames: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        for name in ("num_heads", "image_size", "num_frames"):
            if getattr(self, name) is not None:
                _positive_int(name.replace("_", "-"), getattr(self, name))
        if self.mean is not None:
            object.__setattr__(self, "mean", _triple("mean", self.mean, positive=False))
        if self.std is not None:
            object.__setattr__(self, "std", _triple("std", self.std, positive=True))

    @classmethod
    def parse(cls, num_heads=None, image_size=None, num_frames=None, mean=None, std=None) -> ArchOverrides:
        """From CLI / keyword values; mean and std may be "0.485,0.456,0.406" strings."""
        split = lambda v: [p for p in v.replace(" ", ",").split(",") if p] if isinstance(v, str) else v  # noqa: E731
        return cls(num_heads, image_size, num_frames, split(mean), split(std))

    @classmethod
    def merged(cls, arch: ArchOverrides | None, options: dict) -> ArchOverrides | None:
        """`arch` and the architecture keywords among a command's keyword `options` (num_heads=4,
        mean="0.5,0.5,0.5"), which are taken out of `options`: every library command accepts them as
        load and prune do (and as the CLI's --num-heads ...)."""
        given = {k: options.pop(k) for k in list(options) if k in cls.__dataclass_fields__}
        if not given:
            return arch
        if arch is not None and arch.given():
            raise StaError("give the architecture either as arch= or as keywords (num_heads=...), not both")
        return cls.parse(**given)

    def given(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Provenance:
    """Where each architecture / preprocessing value of a model came from."""

    entries: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, name: str, value, origin: str, why: str | None = None) -> None:
        self.entries[name] = {
            "value": list(value) if isinstance(value, tuple) else value,
            "from": origin,
            **({"why": why} if why else {}),
        }

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict:
        return {"values": self.entries, "notes": list(self.notes)}

    def not_from_config(self) -> list[str]:
        """One phrase per value that neither a config, the weights nor an alias gave (decided for the user)."""
        out = []
        for name, e in self.entries.items():
            if e["from"] in (CONFIG, WEIGHTS, ALIAS):
                continue
            value = ",".join(f"{v:g}" for v in e["value"]) if isinstance(e["value"], list) else e["value"]
            why = f": {e['why']}" if e.get("why") else ""
            out.append(f"{_LABELS.get(name, name)} {value} ({e['from']}{why})")
        return out

    def report(self, what: str) -> None:
        """Log the notes and the values no config gave as one line on stderr (logger 'sta_cli')."""
        for text in self.notes:
            log.warning(f"{what}: {text}")
        decided = self.not_from_config()
        if decided:
            log.warning(f"{what}: " + "; ".join(decided))


_LABELS = {"num_heads": "heads", "image_size": "input size", "num_frames": "frames", "frame_stride": "frame stride"}
