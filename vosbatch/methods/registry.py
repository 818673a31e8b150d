"""The methods by name (``--method``): each a config dataclass, registered without importing its maths, so a
driver can check a configuration without loading torch (the maths is imported where it runs)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

from ..config import config_from_params
from ..registry import Registry


@dataclass(frozen=True)
class Method:
    """A registered method: ``run(MethodInput, config) -> MethodOutput`` (``module:function``, imported on first
    use) and its config dataclass. ``feature_grid(work_hw, config)``: the grid its appearance features must be
    computed on (None: it uses none). ``stage_names(config)``: the intermediate stages it outputs, known before
    it runs."""

    target: str
    config_cls: type
    feature_grid: Optional[Callable[[Tuple[int, int], Any], Tuple[int, int]]] = None
    stage_names: Callable[[Any], List[str]] = lambda cfg: []

    @property
    def run(self) -> Callable:
        if callable(self.target):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def config(self, params: Optional[Mapping[str, Any]] = None):
        """The method's configuration from ``-p`` parameters (dotted keys reach nested groups)."""
        return config_from_params(self.config_cls, params or {})


METHODS: Registry[Method] = Registry("method")
available_methods = METHODS.names
get_method = METHODS.get


def register_method(name: str, config_cls: type, run, feature_grid=None, stage_names=None) -> None:
    """Register a method: ``run`` is its function or ``"module:function"`` (imported where it runs)."""
    METHODS.register(name)(Method(run, config_cls, feature_grid, stage_names or (lambda cfg: [])))
