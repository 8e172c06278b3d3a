"""The keys a training config may set, each with its type, range, default and help.

The sections of :class:`~metarch.engine.config.TrainConfig` give the general keys (help from
their ``Attributes:`` docstrings); every registered meta-learner and backbone gives its
``method.options.*`` or ``model.options.*`` (types, ranges and defaults from its signature,
help from its ``Args:`` docstring), the same signature the config is checked against.
``metarch config keys`` prints them.
"""

from __future__ import annotations

import enum
import inspect
import json
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import annotated_types
from pydantic import BaseModel

from metarch.engine.config import TrainConfig, section_model
from metarch.meta.base import META_LEARNERS
from metarch.models.registry import MODELS
from metarch.registry import Option, Registry, docstring_section, options_of

__all__ = ["ConfigKey", "config_keys"]


@dataclass(frozen=True)
class ConfigKey:
    """One key a config may set.

    Attributes:
        key: Dotted path, as ``--set`` takes it (``method.options.inner_lr``).
        type: Its type in config terms (``float``, ``int | null``, ``'adam' | 'sgd'``).
        range: What values of the type it takes (``> 0``, ``>= 0, <= 180``), or ``""``.
        default: Its default as JSON (``None`` where it is ``required``).
        required: Whether it has no default.
        help: One line on what it does.
        when: ``""`` for a key of every config, else the choice it belongs to
            (``method.name=maml``, ``model.name=conv4``).
    """

    key: str
    type: str
    range: str
    default: Any
    required: bool
    help: str
    when: str = ""

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object."""
        return asdict(self)


def config_keys(
    methods: Sequence[str] | None = None, models: Sequence[str] | None = None
) -> list[ConfigKey]:
    """Every key of a training config, general ones first, then options per choice.

    Args:
        methods: Meta-learners whose options to list (default: all registered).
        models: Backbones whose options to list (default: all registered).

    Raises:
        UnknownNameError: For a name that is not registered (with a suggestion).
    """
    keys = list(_section_keys(TrainConfig, ""))
    keys += _registry_keys(META_LEARNERS, "method", methods, skip=1)
    keys += _registry_keys(MODELS, "model", models, skip=0)
    return keys


def _section_keys(model: type[BaseModel], prefix: str) -> Iterator[ConfigKey]:
    helps = docstring_section(model.__doc__, "Attributes")
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        help_text = field.description or helps.get(name, "")
        annotation = field.annotation
        default = field.get_default(call_default_factory=True)
        if typing.get_origin(annotation) is dict:
            entries = section_model(typing.get_args(annotation)[1])
            yield _key(key, annotation, field.metadata, default, help_text)
            if entries is not None:  # optimizer.groups.NAME.lr, ...
                yield from _section_keys(entries, f"{key}.NAME.")
            continue
        section = section_model(annotation)
        if section is None:
            yield _key(key, annotation, field.metadata, default, help_text)
            continue
        if type(None) in typing.get_args(annotation):
            # An optional section (data.augment): absent, or a mapping of its keys.
            yield ConfigKey(key, "section | null", "", _json(default), False, help_text)
        yield from _section_keys(section, f"{key}.")


def _registry_keys(
    registry: Registry[Any], section: str, names: Sequence[str] | None, *, skip: int
) -> Iterator[ConfigKey]:
    for name in registry.names() if names is None else names:
        target = typing.cast(Callable[..., Any], registry.get(name))
        for option in options_of(target, skip=skip):
            yield _option_key(option, f"{section}.options.", f"{section}.name={name}")


def _option_key(option: Option, prefix: str, when: str) -> ConfigKey:
    type_text, range_text = _type_and_range(option.annotation)
    default = None if option.required else _json(option.default)
    return ConfigKey(
        f"{prefix}{option.name}", type_text, range_text, default, option.required, option.help, when
    )


def _key(
    key: str, annotation: Any, metadata: Sequence[Any], default: Any, help_text: str
) -> ConfigKey:
    type_text, range_text = _type_and_range(annotation, metadata)
    return ConfigKey(key, type_text, range_text, _json(default), False, help_text)


def _type_and_range(annotation: Any, metadata: Sequence[Any] = ()) -> tuple[str, str]:
    """``(type, range)`` of an annotation, with the constraints in it and in ``metadata``."""
    ranges: list[str] = []
    text = _type_text(annotation, ranges)
    for constraint in metadata:
        ranges += _range_texts(constraint)
    return text, ", ".join(dict.fromkeys(ranges))


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _range_texts(constraint: Any) -> list[str]:
    """``["> 0"]`` for ``Gt(0)``, ``[">= 0", "< 1"]`` for ``Interval(ge=0, lt=1)``, ..."""
    if isinstance(constraint, annotated_types.GroupedMetadata):
        return [text for part in constraint for text in _range_texts(part)]
    if not isinstance(constraint, annotated_types.BaseMetadata):
        return []
    return [
        f"{symbol} {getattr(constraint, bound)}"
        for bound, symbol in _BOUNDS
        if getattr(constraint, bound, None) is not None
    ]


def _type_text(annotation: Any, ranges: list[str]) -> str:
    """A type as a config writes it; constraints met on the way are added to ``ranges``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        for constraint in annotation.__metadata__:
            ranges += _range_texts(constraint)
        return _type_text(args[0], ranges)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " | ".join(_type_text(arg, ranges) for arg in args)
    if origin is not None:
        name = "list" if origin in (list, Sequence) else getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(arg, ranges) for arg in args)}]"
    if section_model(annotation) is not None:
        return "section"
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return " | ".join(repr(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _json(value: Any) -> Any:
    """A default as JSON: enums by value, tuples as lists, anything else by its repr."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return _json(value.value)
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
