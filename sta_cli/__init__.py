"""sta: STA token pruning (Semantic-aware Temporal Accumulation, ICCV 2023) for video transformers.

import sta_cli
model = sta_cli.load("videomae-base", r1=64)   # alias, Hub id, folder, weights file or artifact
logits = model(clip)                           # clip: (B, 3, T, H, W), normalised
model.kept_positions                           # per stage: (B, tokens) original token indices

sta_cli.prune("videomae-base", r1=64, out="art")  # the three commands, each returning its report
sta_cli.export("art", "onnx")
sta_cli.profile("clip.mp4", "art")
"""

__version__ = "0.1.0"

from .errors import StaError  # noqa: E402
from .pruning import STAConfig  # noqa: E402
from .runtime.loading import load  # noqa: E402
from .runtime.predict import compare  # noqa: E402
from .tasks.evaluate.run import evaluate  # noqa: E402
from .tasks.export import export  # noqa: E402
from .tasks.profile import profile  # noqa: E402
from .tasks.prune import prune  # noqa: E402

__all__ = ["__version__", "load", "prune", "export", "profile", "evaluate", "compare", "STAConfig", "StaError"]
