"""Optical flow backends behind one interface (see :mod:`vosbatch.flow.base`)."""
from .base import BidirectionalFlow, FlowBackend, available_flows, create_flow, register_flow, resize_flow
from . import dis  # noqa: F401  (registers "dis", "dis-fine", "dis-fast")
from . import raft  # noqa: F401  (registers "raft-small", "raft")

__all__ = ["BidirectionalFlow", "FlowBackend", "available_flows", "create_flow", "register_flow", "resize_flow"]
