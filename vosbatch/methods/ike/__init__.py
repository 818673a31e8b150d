"""IKE (Haller, Florea, Leordeanu, TPAMI): a space-time graph and a per-video network teaching each other."""
from ..registry import register_method
from .config import GraphConfig, IkeConfig, NetConfig, NodeFeatureConfig, stage_names

register_method("ike", IkeConfig, "vosbatch.methods.ike.method:ike", stage_names=stage_names)

__all__ = ["GraphConfig", "IkeConfig", "NetConfig", "NodeFeatureConfig", "stage_names"]
