"""Model aliases: short names users type, and where their weights live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Alias:
    name: str
    source: str  # Hugging Face repo id, an https:// weights URL, or a folder under sta_cli/assets when `packaged`
    family: str  # backbone family: videomae | videoswin
    size: str
    classes: int
    dataset: str
    frame_stride: int  # evaluation sampling stride (paper Sec. 4.1; docs/algorithm.md)
    packaged: bool = False

    @property
    def path(self) -> Path:
        return ASSETS / self.source

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("https://", "http://", "file://"))


def _videomae(name: str, size: str, repo: str, dataset: str) -> Alias:
    classes, stride = (400, 4) if dataset == "kinetics400" else (174, 2)
    return Alias(name, f"MCG-NJU/{repo}", "videomae", size, classes, dataset, stride)


def _videoswin(name: str, size: str, file: str) -> Alias:
    # torchvision's ports of the original release's Kinetics-400 weights (file names carry a sha256 prefix).
    return Alias(name, f"https://download.pytorch.org/models/{file}", "videoswin", size, 400, "kinetics400", 2)


def _videomaev2(name: str, size: str, file: str) -> Alias:
    # VideoMAE V2 ViT-S / ViT-B distilled from ViT-g on Kinetics-710, as mmaction2 1.x ported them with
    # a Kinetics-400 head (configs/recognition/videomaev2; file names carry a sha256 prefix).
    folder = file.rsplit("_", 1)[0]
    return Alias(name, f"{_MMACTION2}/videomaev2/{folder}/{file}", "videomae", size, 400, "kinetics400", 4)


_MMACTION2 = "https://download.openmmlab.com/mmaction/v1.0/recognition"
# The original Video Swin release (github.com/SwinTransformer/Video-Swin-Transformer, mmaction 0.x layout).
_SWIN_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4"


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
        _videoswin("videoswin-tiny", "T", "swin3d_t-7615ae03.pth"),
        _videoswin("videoswin-small", "S", "swin3d_s-da41c237.pth"),
        _videoswin("videoswin-base", "B", "swin3d_b_1k-24f7c7c6.pth"),
        _videoswin("videoswin-base-22k", "B", "swin3d_b_22k-7c6ae6fa.pth"),
        # Swin-B, window 16x7x7, fine-tuned on Something-Something v2 from the Kinetics-400 (IN-22K) model.
        Alias(
            "videoswin-base-ssv2",
            f"{_SWIN_RELEASE}/swin_base_patch244_window1677_sthv2.pth",
            "videoswin",
            "B",
            174,
            "ssv2",
            2,
        ),
        _videomaev2(
            "videomaev2-small",
            "S",
            "vit-small-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400_20230510-25c748fd.pth",
        ),
        _videomaev2(
            "videomaev2-base",
            "B",
            "vit-base-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400_20230510-3e7f93b2.pth",
        ),
        # Small model trained on synthetic actions, shipped in the package (sta_cli/demo, scripts/train_demo.py).
        Alias("demo", "demo", "videomae", "demo", 8, "synthetic-actions", 1, packaged=True),
    ]
}


def kinetics400_labels() -> list[str]:
    """Kinetics-400 class names in the released heads' index order (alphabetical, as torchvision lists them)."""
    return (ASSETS / "kinetics400_labels.txt").read_text().splitlines()


def ssv2_labels() -> list[str]:
    """Something-Something v2 class names in the index order of the dataset's labels file (ids 0..173)."""
    return (ASSETS / "ssv2_labels.txt").read_text().splitlines()


# Class names for a head of this many classes when nothing else names them.
DATASET_LABELS = {400: ("Kinetics-400", kinetics400_labels), 174: ("Something-Something v2", ssv2_labels)}


def register(alias: Alias) -> None:
    """Add an alias (used for the packaged demo model and other backbone families)."""
    ALIASES[alias.name] = alias
