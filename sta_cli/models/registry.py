"""Model aliases: short names users type, and where their weights live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Alias:
    name: str
    source: str  # Hugging Face repo id, or a folder under sta_cli/assets when `packaged`
    family: str  # backbone family: videomae | videoswin
    size: str
    classes: int
    dataset: str
    frame_stride: int  # evaluation sampling stride (reference-notes §4)
    packaged: bool = False

    @property
    def path(self) -> Path:
        return ASSETS / self.source


def _videomae(name: str, size: str, repo: str, dataset: str) -> Alias:
    classes, stride = (400, 4) if dataset == "kinetics400" else (174, 2)
    return Alias(name, f"MCG-NJU/{repo}", "videomae", size, classes, dataset, stride)


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        _videomae("videomae-small", "S", "videomae-small-finetuned-kinetics", "kinetics400"),
        _videomae("videomae-base", "B", "videomae-base-finetuned-kinetics", "kinetics400"),
        _videomae("videomae-large", "L", "videomae-large-finetuned-kinetics", "kinetics400"),
        _videomae("videomae-huge", "H", "videomae-huge-finetuned-kinetics", "kinetics400"),
        _videomae("videomae-small-ssv2", "S", "videomae-small-finetuned-ssv2", "ssv2"),
        _videomae("videomae-base-ssv2", "B", "videomae-base-finetuned-ssv2", "ssv2"),
        _videomae("videomae-base-short", "B", "videomae-base-short-finetuned-kinetics", "kinetics400"),
        _videomae("videomae-base-short-ssv2", "B", "videomae-base-short-finetuned-ssv2", "ssv2"),
    ]
}


def register(alias: Alias) -> None:
    """Add an alias (used for the packaged demo model and other backbone families)."""
    ALIASES[alias.name] = alias
