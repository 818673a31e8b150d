"""Segmentation methods: pure functions from a sequence's arrays to soft masks."""
from .base import MethodInput, MethodOutput, available_methods, get_method, register_method
from . import globalopt  # noqa: F401  (registers "globalopt")
from . import ike  # noqa: F401  (registers "ike")

__all__ = ["MethodInput", "MethodOutput", "available_methods", "get_method", "register_method"]
