from .method import IkeConfig, ike  # noqa: F401
