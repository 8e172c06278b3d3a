"""Name-to-object registries, so that algorithms, models and formats are found by name.

Every extensible family in metarch (data formats, backbones, meta-learners, search methods,
devices) keeps a :class:`Registry`. Adding a new member is one decorator; the CLI and the
config files then accept its name, and a misspelt name gets a suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from metarch.errors import MetarchError

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(MetarchError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Args:
        kind: What the members are, used in error messages (``"data format"``, ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._members: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds the decorated object under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name``.

        Raises:
            ValueError: If the name is taken (a programming error, not a user error).
        """
        if name in self._members:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._members[name] = obj

    def get(self, name: str) -> T:
        """Return the member called ``name``.

        Raises:
            UnknownNameError: With the known names and the closest match.
        """
        try:
            return self._members[name]
        except KeyError:
            known = ", ".join(sorted(self._members)) or "none"
            close = difflib.get_close_matches(name, self._members, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._members)

    def items(self) -> list[tuple[str, T]]:
        """``(name, member)`` pairs, in registration order."""
        return list(self._members.items())

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)
