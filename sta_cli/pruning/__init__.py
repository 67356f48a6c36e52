"""The STA algorithm: settings (`config`) and token selection as pure tensor functions (`sta`)."""

from .config import STAConfig, Stage, plan_stages
from .sta import gather_tokens, similarity_feature, stage_keep_indices

__all__ = ["STAConfig", "Stage", "plan_stages", "stage_keep_indices", "similarity_feature", "gather_tokens"]
