from .method import IkeConfig, ike, stage_names  # noqa: F401
