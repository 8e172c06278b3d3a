"""Name-to-object registries, so that algorithms, models and formats are found by name.

Every extensible family in metarch (data formats, backbones, meta-learners, search methods,
devices) keeps a :class:`Registry`. Adding a new member is one decorator; the CLI and the
config files then accept its name, and a misspelt name gets a suggestion.

The options of a registered class or factory are its keyword parameters (:func:`options_of`):
their annotations are the types a config is checked against, ranges included
(``inner_lr: PositiveFloat = 0.4``), and the ``Args:`` section of its docstring is their
help (``metarch config keys``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar

from annotated_types import Ge, Gt

from metarch.errors import MetarchError

__all__ = [
    "NonNegativeInt",
    "Option",
    "PositiveFloat",
    "PositiveInt",
    "Registry",
    "UnknownNameError",
    "docstring_section",
    "options_of",
]

T = TypeVar("T")

# Option types with a range, checked where a config sets the option (pydantic reads the
# annotated_types metadata); to Python and mypy they are plain int and float.
PositiveFloat = Annotated[float, Gt(0)]
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]


class UnknownNameError(MetarchError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Option(typing.NamedTuple):
    """One keyword option of a registered class or factory.

    Attributes:
        name: Keyword.
        annotation: Its type annotation (``Any`` if it has none).
        default: Its default, or ``inspect.Parameter.empty`` if it is required.
        help: First sentence of its entry in the ``Args:`` section of the docstring.
    """

    name: str
    annotation: Any
    default: Any
    help: str = ""

    @property
    def required(self) -> bool:
        """Whether the option has no default."""
        return self.default is inspect.Parameter.empty


def _signature_owner(target: Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The function whose named parameters are ``target``'s options, and those it fixes.

    Subclasses that only forward ``**kwargs`` (FOMAML, ANIL, ...) take their parent's
    signature, less the options they fix (a ``fixed_options`` mapping on the class); a
    ``functools.partial`` takes its function's, less the keywords it binds.
    """
    fixed: dict[str, Any] = {}
    if isinstance(target, functools.partial):
        fixed = dict(target.keywords)
        target = target.func
    if not inspect.isclass(target):
        return target, fixed
    fixed.update(getattr(target, "fixed_options", {}))
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        kinds = {p.kind for p in inspect.signature(init).parameters.values()}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            return typing.cast(Callable[..., Any], init), fixed
    return typing.cast(Callable[..., Any], target.__init__), fixed


def options_of(target: Callable[..., Any], *, skip: int = 0) -> list[Option]:
    """The keyword options of a class or factory a config may set.

    Args:
        target: A registered class, function or ``functools.partial``.
        skip: Leading positional parameters that are not options (a learner's ``model``).
    """
    owner, fixed = _signature_owner(target)
    hints = typing.get_type_hints(owner, include_extras=True)  # keep the ranges
    helps = _argument_help(target)
    parameters = [p for p in inspect.signature(owner).parameters.values() if p.name != "self"]
    return [
        Option(p.name, hints.get(p.name, Any), p.default, helps.get(p.name, ""))
        for p in parameters[skip:]
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        and p.name not in fixed
    ]


def _argument_help(target: Callable[..., Any]) -> dict[str, str]:
    """Help of each argument, from the ``Args:`` sections of ``target`` and its bases."""
    if isinstance(target, functools.partial):
        target = target.func
    documented = target.__mro__ if inspect.isclass(target) else (target,)
    helps: dict[str, str] = {}
    for obj in documented:
        for name, text in docstring_section(obj.__doc__, "Args").items():
            helps.setdefault(name, text)
    return helps


_ENTRY = re.compile(r"^(\s*)(\w+)(?: \([^)]*\))?:\s*(.*)$")
# A reST role (:class:`~a.b.C`): its target, shortened to the last name after a tilde.
_ROLE = re.compile(r":[a-z]+:`(?:~[\w.]*\.)?([^`]+)`")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def docstring_section(doc: str | None, section: str) -> dict[str, str]:
    """``name -> first sentence`` of the entries of a Google-style docstring section.

    Args:
        doc: A docstring (``None``: no entries).
        section: ``"Args"``, ``"Attributes"``, ...
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = lines.index(f"{section}:") + 1
    except ValueError:
        return {}
    entries: dict[str, list[str]] = {}
    indent: int | None = None
    for line in lines[start:]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:
            break  # the next section
        match = _ENTRY.match(line)
        if match and (indent is None or width == indent):
            indent = width
            entries[match[2]] = [match[3]]
        elif entries:
            entries[next(reversed(entries))].append(line.strip())
    return {name: _first_sentence(" ".join(parts)) for name, parts in entries.items()}


def _first_sentence(text: str) -> str:
    """``text``'s first sentence, with reST roles and literals as plain text."""
    plain = _ROLE.sub(r"\1", text).replace("``", "")
    return _SENTENCE_END.split(plain, maxsplit=1)[0].strip()


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Members that accept attributes are stamped with the name they are registered under
    (``registered_name``), so an object can say what it is called.

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
        # Builtins and other closed objects cannot be stamped.
        with contextlib.suppress(AttributeError, TypeError):
            obj.registered_name = name  # type: ignore[attr-defined]

    def name_of(self, obj: object) -> str:
        """The name ``obj`` (or its class) is registered under.

        Raises:
            UnknownNameError: If it is not a member.
        """
        for name, member in self._members.items():
            if member is obj or (inspect.isclass(member) and type(obj) is member):
                return name
        raise UnknownNameError(f"{obj!r} is not a registered {self.kind}")

    def options(self, name: str, *, skip: int = 0) -> list[Option]:
        """The options of member ``name`` with their defaults (see :func:`options_of`)."""
        return options_of(typing.cast(Callable[..., Any], self.get(name)), skip=skip)

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
