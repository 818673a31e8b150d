"""Named constructors, as timm's model registry: ``--flow raft-small``, ``--features dino-vitb8``,
``--method ike`` each look a name up in one of these. One helper, so an unknown name fails the same
way everywhere: naming what was asked for and what exists."""
from __future__ import annotations

from typing import Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> item table with a ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return wrap

    def names(self) -> List[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items
