"""Generate tests/fixtures/swin/: torchvision's SwinTransformer3d on small random weights.

torchvision cannot be installed beside the project's torch, so this runs once in a separate venv
and its outputs are committed (the tests only read them):

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 safetensors
    /tmp/tvenv/bin/python scripts/make_swin_fixtures.py

Per case it writes:
  <case>_torchvision.safetensors  the state dict exactly as torchvision names it
  <case>_io.safetensors           input (B, C, T, H, W) and torchvision's logits
  <case>.json                     the architecture and the torch/torchvision versions used
and sta_cli/assets/kinetics400_labels.txt (torchvision's Kinetics-400 class names in index order,
the labels of the Video Swin aliases).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models._meta import _KINETICS400_CATEGORIES
from torchvision.models.video.swin_transformer import SwinTransformer3d

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "swin"

CASES = {
    # Windows tile the grid exactly; stage 3 equals the window (no shift); the last merge pads 3x3 -> 4x4.
    "grid": dict(
        embed_dim=6, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[2, 3, 3], input=[1, 3, 8, 48, 48]
    ),
    # The real (8, 7, 7) window on a small odd-sized clip: patch-embed padding in time, window
    # padding, windows shrinking to the grid, merge padding, non-square frames.
    "padded": dict(
        embed_dim=4, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=[8, 7, 7], input=[1, 3, 5, 40, 36]
    ),
}
NUM_CLASSES = 10


def randomise(model: torch.nn.Module) -> None:
    """Weights that make every part of the network matter (default init leaves norms at 1/0)."""
    for name, p in model.named_parameters():
        if "relative_position_bias_table" in name:
            p.data.normal_(0, 0.5)
        elif p.dim() == 1 and name.endswith("weight"):
            p.data.normal_(1, 0.1)
        elif p.dim() == 1:
            p.data.normal_(0, 0.1)
        else:
            p.data.normal_(0, p[0].numel() ** -0.5)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (case, spec) in enumerate(CASES.items()):
        torch.manual_seed(seed)
        model = SwinTransformer3d(
            patch_size=[2, 4, 4],
            embed_dim=spec["embed_dim"],
            depths=spec["depths"],
            num_heads=spec["num_heads"],
            window_size=spec["window_size"],
            stochastic_depth_prob=0.0,
            num_classes=NUM_CLASSES,
        ).eval()
        randomise(model)
        x = torch.randn(spec["input"])
        with torch.no_grad():
            logits = model(x)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if spec["window_size"] == [8, 7, 7]:
            # 392x392 int64 per block would dominate the fixture; real checkpoints carry it, the
            # "grid" case keeps it so that loading such keys is tested.
            sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
        save_file(sd, OUT / f"{case}_torchvision.safetensors")
        save_file({"input": x, "logits": logits}, OUT / f"{case}_io.safetensors")
        meta = {k: v for k, v in spec.items()}
        meta.update(num_classes=NUM_CLASSES, torch=torch.__version__, torchvision=torchvision.__version__)
        (OUT / f"{case}.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(case, tuple(logits.shape), sum(p.numel() for p in model.parameters()), "params")
    (ROOT / "sta_cli" / "assets" / "kinetics400_labels.txt").write_text("\n".join(_KINETICS400_CATEGORIES) + "\n")


if __name__ == "__main__":
    main()
