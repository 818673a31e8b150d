"""Optical flow backends behind one interface (see :mod:`vosbatch.flow.base`)."""
from .base import BidirectionalFlow, FlowBackend, available_flows, create_flow, register_flow, resize_flow
from . import dis  # noqa: F401  (registers "dis")

try:  # RAFT is pure torch; it registers "raft-small" and "raft".
    from . import raft  # noqa: F401
except ImportError:  # pragma: no cover - only while the module does not exist yet
    pass

__all__ = ["BidirectionalFlow", "FlowBackend", "available_flows", "create_flow", "register_flow", "resize_flow"]
