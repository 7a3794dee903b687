"""A tiny name -> object registry, so choosing an algorithm is a lookup, never a string if/elif.

One :class:`Registry` object exists per family (advantage estimators, loss aggregations, KL
estimators); every member of a family has the same typed signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (usually functions sharing one signature).

    >>> SQUARES: Registry[Callable[[int], int]] = Registry("square fn")
    >>> @SQUARES.register("sq")
    ... def sq(x: int) -> int:
    ...     return x * x
    >>> SQUARES.get("sq")(3)
    9
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what the entries are, used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated object under ``name``; refuses duplicates."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorator(obj: T) -> T:
            if name in self._entries:  # registered between register() and decoration
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; KeyError listing the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(repr(n) for n in sorted(self._entries))
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self._entries)})"
