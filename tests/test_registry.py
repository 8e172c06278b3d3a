"""Registries: lookup with suggestions, name stamps, and the options members take."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import pytest
from annotated_types import Gt

from metarch.meta import META_LEARNERS
from metarch.models.registry import MODELS
from metarch.registry import (
    PositiveFloat,
    Registry,
    UnknownNameError,
    docstring_section,
    options_of,
)


def test_lookup_suggests_the_closest_name() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("sprocket", 1)
    assert registry.get("sprocket") == 1
    with pytest.raises(UnknownNameError, match=r"'sprockt' \(did you mean 'sprocket'"):
        registry.get("sprockt")
    with pytest.raises(ValueError, match="already registered"):
        registry.add("sprocket", 2)


def test_members_are_stamped_with_their_names() -> None:
    registry: Registry[type] = Registry("thing")

    @registry.register("gizmo")
    class Gizmo:
        pass

    assert Gizmo.registered_name == "gizmo"  # type: ignore[attr-defined]
    assert registry.name_of(Gizmo) == registry.name_of(Gizmo()) == "gizmo"
    with pytest.raises(UnknownNameError):
        registry.name_of(object())
    registry.add("closed", int)  # a builtin cannot be stamped; registering still works
    assert registry.get("closed") is int
    assert META_LEARNERS.get("protonet").registered_name == "protonet"


def test_options_list_defaults_and_leave_out_fixed_ones() -> None:
    def factory(a: int, b: float = 0.5, *, c: str = "x", **rest: object) -> None:
        pass

    options = options_of(factory)
    assert [(o.name, o.default) for o in options] == [
        ("a", inspect.Parameter.empty),
        ("b", 0.5),
        ("c", "x"),
    ]
    assert options[0].required and not options[1].required
    assert [o.name for o in options_of(functools.partial(factory, b=1.0))] == ["a", "c"]
    conv4 = {o.name: o.default for o in MODELS.options("conv4")}
    assert conv4["hidden"] == 64 and "pool" not in conv4  # the partial fixes the pooling
    maml = {o.name: o.default for o in META_LEARNERS.options("maml", skip=1)}
    assert maml["inner_lr"] == 0.4 and maml["first_order"] is False
    fomaml = {o.name for o in META_LEARNERS.options("fomaml", skip=1)}
    assert "first_order" not in fomaml and "inner_lr" in fomaml


def test_options_carry_their_range_and_help() -> None:
    class Base:
        """A base.

        Args:
            rate: Step size of the rule; a second sentence
                that is not help. Really.
            size (int): Examples per step, with a
                continuation line.

        Returns:
            Nothing.
        """

        def __init__(self, rate: PositiveFloat = 0.1, size: int = 1) -> None:
            pass

    class Child(Base):
        """A child with no Args section: its options' help comes from the base."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)

    rate, size = options_of(Child)
    assert rate.help == "Step size of the rule; a second sentence that is not help."
    assert size.help == "Examples per step, with a continuation line."
    assert typing.get_args(rate.annotation)[1] == Gt(0)  # the range is kept
    assert docstring_section(Base.__doc__, "Returns") == {}
    assert docstring_section(None, "Args") == {}
    fomaml = {o.name: o.help for o in META_LEARNERS.options("fomaml", skip=1)}
    assert fomaml["norm_policy"] == "Batch-norm statistics policy (see metarch.models.norm)."
    assert fomaml["loss"].startswith("The task loss by name (TASK_LOSSES): cross_entropy")
