"""Segmentation methods: pure functions from a sequence's arrays to soft masks. Importing this package
registers them by name without importing their maths (torch), which loads where a method runs."""
from .registry import Method, available_methods, get_method, register_method
from . import globalopt  # noqa: F401  (registers "globalopt")
from . import ike  # noqa: F401  (registers "ike")

__all__ = ["Method", "available_methods", "get_method", "register_method"]
