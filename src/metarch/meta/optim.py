"""Inner-loop optimizers: functional, differentiable update rules over parameter dicts.

In the spirit of optax's and TorchOpt's gradient transformations, an
:class:`InnerOptimizer` is a pair of pure functions,

* ``init(params) -> state`` and
* ``update(grads, state, params, step=..., hyper=...) -> (updates, state)``,

where ``params``, ``grads`` and ``updates`` are ``{name: tensor}`` dicts and the new
parameters are ``apply_updates(params, updates)``. Nothing is changed in place, so the
same rule runs for one task, under ``torch.func.vmap`` and on task-stacked tensors
(``(T, *shape)``, the task-batched engine), and autograd differentiates through it:
second-order meta-gradients flow through every rule here, including Adam.

Rules compose: :class:`Chain` runs transforms one after another (clip, then scale),
:class:`Partition` routes parameter groups to different rules (the architecture to Adam,
the weights to SGD; a group routed to ``None`` stays fixed), and :class:`OnSteps` switches a
rule on only for some inner steps (a warm-up, "adapt the architecture in the first half").

Learnable hyper-parameters (Meta-SGD's per-element rates, MAML++'s per-layer-per-step
rates) are the rule's own ``nn.Parameter`` s: the "inner optimizer" meta-parameter group,
saved with the learner. ``update`` reads them from ``hyper`` when given (for example leaf
copies a worker thread collects gradients in), else from the module itself.

To add a rule: subclass :class:`InnerOptimizer`, implement ``update`` (and ``init`` if it
keeps state), and register a builder in :data:`INNER_OPTIMIZERS`.
"""

from __future__ import annotations

import fnmatch
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metarch.registry import Registry

__all__ = [
    "INNER_OPTIMIZERS",
    "AddDecayedWeights",
    "Chain",
    "ClipByGlobalNorm",
    "Hyper",
    "InnerOptimizer",
    "InnerOptimizerSpec",
    "LearnedRate",
    "OnSteps",
    "OptState",
    "Params",
    "Partition",
    "Scale",
    "ScaleByAdam",
    "adam",
    "adam_second_moments",
    "adam_step_counts",
    "apply_updates",
    "build_inner_optimizer",
    "grouped_inner_optimizer",
    "route_by_pattern",
    "sgd",
    "with_adam_second_moments",
]

Params = dict[str, Tensor]
#: An optimizer's state: nested dicts (and tuples) of tensors and numbers.
OptState = dict[str, Any]
Hyper = Mapping[str, Tensor]


def apply_updates(params: Mapping[str, Tensor], updates: Mapping[str, Tensor]) -> Params:
    """``params + updates`` for every updated name; other parameters are kept as they are."""
    return {
        name: value + updates[name] if name in updates else value for name, value in params.items()
    }


def _sub(hyper: Hyper, prefix: str) -> dict[str, Tensor]:
    """The entries of ``hyper`` below ``prefix.``, with the prefix removed."""
    start = f"{prefix}."
    return {key[len(start) :]: value for key, value in hyper.items() if key.startswith(start)}


class InnerOptimizer(nn.Module, ABC):
    """A differentiable update rule for the inner loop (see the module docstring)."""

    #: Whether an element's update depends on that element (and its state) alone, so the
    #: rule gives the same result on task-stacked ``(T, *shape)`` tensors as task by task.
    #: Rules that look across elements (clipping by a global norm) set it to False, and
    #: the task-batched engine then runs tasks one by one.
    elementwise: bool = True

    def init(self, params: Mapping[str, Tensor]) -> OptState:
        """The rule's state for ``params`` before the first step (stateless: ``{}``)."""
        return {}

    @abstractmethod
    def update(
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        """The updates for ``grads`` at inner step ``step`` (0-based) and the new state.

        Args:
            grads: Gradients (or the updates of a previous transform in a chain).
            state: The state from :meth:`init` or the previous step.
            params: The parameters the updates will be added to.
            step: Inner step, 0-based.
            hyper: The rule's learnable hyper-parameters by their names in
                ``named_parameters()`` (default: the module's own).
        """

    def updated(self, names: Sequence[str], step: int) -> list[str]:
        """Those of ``names`` this rule may move at inner step ``step`` (default: all).

        An inner loop computes gradients for these only: the architecture step of first-order
        DARTS needs no gradient of the weights, which stand still at that step.
        """
        return list(names)

    def hyper(self, hyper: Hyper | None) -> Hyper:
        """``hyper``, or the module's own parameters."""
        return dict(self.named_parameters()) if hyper is None else hyper

    def leaf_copies(self) -> dict[str, Tensor]:
        """Detached leaf copies of the learnable hyper-parameters, to pass as ``hyper``.

        A worker thread collects its share of their meta-gradients in these leaves
        instead of accumulating into the shared parameters in whatever order threads end.
        """
        return {name: p.detach().requires_grad_() for name, p in self.named_parameters()}

    def step(
        self,
        params: Mapping[str, Tensor],
        grads: Mapping[str, Tensor],
        state: OptState,
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        """``update`` then :func:`apply_updates`: the new parameters and state."""
        updates, state = self.update(grads, state, params, step=step, hyper=hyper)
        return apply_updates(params, updates), state


class Scale(InnerOptimizer):
    """Multiply every update by a constant (``Scale(-lr)`` is the SGD step)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        return {name: self.factor * g for name, g in grads.items()}, state

    def extra_repr(self) -> str:  # noqa: D102
        return f"factor={self.factor}"


RateShape = Literal["element", "tensor", "tensor_step"]


class LearnedRate(InnerOptimizer):
    """Descend with learnable rates: ``update = -rate * grad``; the rates are meta-learned.

    Args:
        params: The parameters it will update (the rates take their shapes, dtypes and
            devices).
        init: Initial rate.
        shape: ``element`` (a rate per element: Meta-SGD), ``tensor`` (one per tensor) or
            ``tensor_step`` (one per tensor and inner step: MAML++'s LSLR).
        steps: Inner steps (``tensor_step`` only); later steps reuse the last rate.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        init: float,
        shape: RateShape = "element",
        steps: int = 1,
    ) -> None:
        super().__init__()
        if shape not in ("element", "tensor", "tensor_step"):
            raise ValueError(f"rate shape must be element, tensor or tensor_step, got {shape!r}")
        self.shape: RateShape = shape
        self.names = list(params)
        self.rates = nn.ParameterDict()
        for name, value in params.items():
            if shape == "element":
                rate = torch.full_like(value, init)
            else:
                rate = value.new_full((max(steps, 1) if shape == "tensor_step" else 1,), init)
            self.rates[self._key(name)] = nn.Parameter(rate.detach())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")  # ParameterDict keys cannot contain dots

    def rate(self, name: str, step: int, hyper: Hyper | None = None) -> Tensor:
        """The rate of parameter ``name`` at inner step ``step``."""
        rate = self.hyper(hyper)[f"rates.{self._key(name)}"]
        if self.shape == "element":
            return rate
        return rate[min(step, len(rate) - 1)] if self.shape == "tensor_step" else rate[0]

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        hyper = self.hyper(hyper)
        return {name: -self.rate(name, step, hyper) * g for name, g in grads.items()}, state

    def extra_repr(self) -> str:  # noqa: D102
        return f"shape={self.shape!r}, tensors={len(self.names)}"


class ScaleByAdam(InnerOptimizer):
    """Adam's direction ``m_hat / (sqrt(v_hat + eps_root) + eps)`` (no rate: chain a scale).

    The state holds the first and second moments and the step count; it can be carried
    from task to task (Reptile's inner Adam keeps its second moment across tasks, with
    ``beta1 = 0``). ``eps_root`` inside the square root keeps the second-order gradient
    finite where a gradient is exactly zero (TorchOpt's remedy; ``d sqrt(v)/dv`` is
    infinite at 0); 1e-20 changes nothing measurable at first order.

    Args:
        betas: ``(beta1, beta2)``.
        eps: Added to the denominator.
        eps_root: Added under the square root.
    """

    def __init__(
        self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eps_root: float = 1e-20
    ) -> None:
        super().__init__()
        beta1, beta2 = float(betas[0]), float(betas[1])
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"Adam's betas must lie in [0, 1), got {betas}")
        self.betas = (beta1, beta2)
        self.eps = eps
        self.eps_root = eps_root

    def init(self, params: Mapping[str, Tensor]) -> OptState:  # noqa: D102
        return {
            "m": {name: torch.zeros_like(p) for name, p in params.items()},
            "v": {name: torch.zeros_like(p) for name, p in params.items()},
            "count": 0,
        }

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        beta1, beta2 = self.betas
        count = int(state["count"]) + 1
        first = {n: beta1 * state["m"][n] + (1.0 - beta1) * g for n, g in grads.items()}
        second = {n: beta2 * state["v"][n] + (1.0 - beta2) * g * g for n, g in grads.items()}
        correct1 = 1.0 - beta1**count
        correct2 = 1.0 - beta2**count
        updates = {
            n: (first[n] / correct1) / (torch.sqrt(second[n] / correct2 + self.eps_root) + self.eps)
            for n in grads
        }
        # Moments of parameters without a gradient this step are kept.
        new_state = {
            "m": {**state["m"], **first},
            "v": {**state["v"], **second},
            "count": count,
        }
        return updates, new_state

    def extra_repr(self) -> str:  # noqa: D102
        return f"betas={self.betas}, eps={self.eps}, eps_root={self.eps_root}"


class AddDecayedWeights(InnerOptimizer):
    """Add ``weight_decay * params`` to the gradients (L2, chained before a rule).

    Coupled L2 regularisation, as ``torch.optim.Adam``'s ``weight_decay``.
    """

    def __init__(self, weight_decay: float) -> None:
        super().__init__()
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = weight_decay

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        return {n: g + self.weight_decay * params[n] for n, g in grads.items()}, state

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight_decay={self.weight_decay}"


class ClipByGlobalNorm(InnerOptimizer):
    """Scale all updates down together so their joint L2 norm is at most ``max_norm``."""

    elementwise = False

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = float(max_norm)

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        if not grads:
            return {}, state
        norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))  # type: ignore[arg-type]
        factor = torch.clamp(self.max_norm / (norm + 1e-12), max=1.0)
        return {name: g * factor for name, g in grads.items()}, state

    def extra_repr(self) -> str:  # noqa: D102
        return f"max_norm={self.max_norm}"


class Chain(InnerOptimizer):
    """Apply transforms one after another: each transforms the previous one's updates."""

    def __init__(self, *transforms: InnerOptimizer) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.elementwise = all(t.elementwise for t in transforms)

    def init(self, params: Mapping[str, Tensor]) -> OptState:  # noqa: D102
        return {str(i): t.init(params) for i, t in enumerate(self._children())}

    def _children(self) -> list[InnerOptimizer]:
        return [t for t in self.transforms if isinstance(t, InnerOptimizer)]

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        hyper = self.hyper(hyper)
        updates: Params = dict(grads)
        new_state: OptState = {}
        for i, transform in enumerate(self._children()):
            sub = _sub(hyper, f"transforms.{i}")
            updates, new_state[str(i)] = transform.update(
                updates, state[str(i)], params, step=step, hyper=sub
            )
        return updates, new_state


Route = Callable[[str], "str | None"]


def route_by_pattern(patterns: Mapping[str, str | None]) -> Route:
    """A route from ``fnmatch`` patterns to groups; the first matching pattern wins.

    ``route_by_pattern({"*.alpha*": "architecture", "*": "weights"})`` sends architecture
    weights to one group and the rest to another; a ``None`` group is not updated.

    Raises:
        KeyError: (when called) for a name no pattern matches.
    """
    ordered = list(patterns.items())

    def route(name: str) -> str | None:
        for pattern, group in ordered:
            if fnmatch.fnmatchcase(name, pattern):
                return group
        raise KeyError(f"no route for parameter {name!r} (patterns: {', '.join(patterns)})")

    return route


class Partition(InnerOptimizer):
    """Route each parameter to the rule of its group; parameters routed to ``None`` stay.

    Args:
        rules: Group name -> rule.
        route: Parameter name -> group name (or ``None``); see :func:`route_by_pattern`.
    """

    def __init__(self, rules: Mapping[str, InnerOptimizer], route: Route) -> None:
        super().__init__()
        self.rules = nn.ModuleDict(dict(rules))
        self.route = route
        self.elementwise = all(rule.elementwise for rule in rules.values())

    def _groups(self, names: Collection[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in names:
            group = self.route(name)
            if group is None:
                continue
            if group not in self.rules:
                raise KeyError(
                    f"parameter {name!r} is routed to group {group!r}, which has no rule "
                    f"(groups: {', '.join(self.rules)})"
                )
            groups.setdefault(group, []).append(name)
        return groups

    def _rule(self, group: str) -> InnerOptimizer:
        rule = self.rules[group]
        assert isinstance(rule, InnerOptimizer)
        return rule

    def updated(self, names: Sequence[str], step: int) -> list[str]:  # noqa: D102
        moved = {
            name
            for group, members in self._groups(names).items()
            for name in self._rule(group).updated(members, step)
        }
        return [name for name in names if name in moved]

    def init(self, params: Mapping[str, Tensor]) -> OptState:  # noqa: D102
        groups = self._groups(list(params))
        return {
            group: self._rule(group).init({n: params[n] for n in groups.get(group, [])})
            for group in self.rules
        }

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        hyper = self.hyper(hyper)
        updates: Params = {}
        new_state = dict(state)
        for group, names in self._groups(list(grads)).items():
            part, new_state[group] = self._rule(group).update(
                {n: grads[n] for n in names},
                state[group],
                {n: params[n] for n in names},
                step=step,
                hyper=_sub(hyper, f"rules.{group}"),
            )
            updates.update(part)
        return updates, new_state


class OnSteps(InnerOptimizer):
    """A rule active only at some inner steps; at the others nothing moves.

    The state is kept through inactive steps. Uses: a warm-up without architecture steps,
    architecture steps only in the first half of the inner loop.

    Args:
        rule: The rule.
        active: Predicate on the 0-based inner step, or the collection of active steps.
    """

    def __init__(
        self, rule: InnerOptimizer, active: Callable[[int], bool] | Collection[int]
    ) -> None:
        super().__init__()
        self.rule = rule
        self.elementwise = rule.elementwise
        self.active: Callable[[int], bool] = active if callable(active) else active.__contains__

    def init(self, params: Mapping[str, Tensor]) -> OptState:  # noqa: D102
        return self.rule.init(params)

    def updated(self, names: Sequence[str], step: int) -> list[str]:  # noqa: D102
        return self.rule.updated(names, step) if self.active(step) else []

    def update(  # noqa: D102
        self,
        grads: Mapping[str, Tensor],
        state: OptState,
        params: Mapping[str, Tensor],
        *,
        step: int,
        hyper: Hyper | None = None,
    ) -> tuple[Params, OptState]:
        if not self.active(step):
            return {}, state
        return self.rule.update(
            grads, state, params, step=step, hyper=_sub(self.hyper(hyper), "rule")
        )


# -- carried state -------------------------------------------------------------------------


def _is_adam_state(state: object) -> bool:
    return isinstance(state, dict) and {"m", "v", "count"} <= state.keys()


def adam_second_moments(state: OptState) -> Params:
    """The second-moment estimates of every :class:`ScaleByAdam` in a state, by name.

    Works through any nesting of :class:`Chain`, :class:`Partition` and :class:`OnSteps`
    states, so a learner can carry Adam's state from task to task (Reptile) whatever rule
    holds it.
    """
    if _is_adam_state(state):
        return dict(state["v"])
    found: Params = {}
    for value in state.values():
        if isinstance(value, dict):
            found.update(adam_second_moments(value))
    return found


def adam_step_counts(state: OptState) -> dict[str, int]:
    """The step count of the :class:`ScaleByAdam` that holds each parameter, by name.

    Each Adam of a rule counts its own steps (an architecture Adam idle during a warm-up
    has taken none while the weights' Adam took many), so a carried state keeps them apart.
    """
    if _is_adam_state(state):
        return dict.fromkeys(state["v"], int(state["count"]))
    found: dict[str, int] = {}
    for value in state.values():
        if isinstance(value, dict):
            found.update(adam_step_counts(value))
    return found


def with_adam_second_moments(
    state: OptState, moments: Mapping[str, Tensor], counts: int | Mapping[str, int]
) -> OptState:
    """``state`` with its Adams' second moments replaced where ``moments`` names them.

    An Adam's step count becomes ``counts`` (one count for all), or the count
    ``counts`` gives its parameters (see :func:`adam_step_counts`).
    """
    if _is_adam_state(state):
        replaced = {name: moments.get(name, v) for name, v in state["v"].items()}
        count = state["count"]
        if isinstance(counts, int):
            count = counts
        else:
            known = [counts[name] for name in replaced if name in counts]
            if len(set(known)) > 1:
                raise ValueError(f"one Adam holds parameters with different step counts: {known}")
            count = known[0] if known else count
        return {**state, "v": replaced, "count": count}
    return {
        key: with_adam_second_moments(value, moments, counts) if isinstance(value, dict) else value
        for key, value in state.items()
    }


# -- builders ------------------------------------------------------------------------------


def sgd(lr: float, weight_decay: float = 0.0) -> InnerOptimizer:
    """Plain gradient descent with a fixed rate (MAML's inner loop)."""
    if weight_decay:
        return Chain(AddDecayedWeights(weight_decay), Scale(-lr))
    return Scale(-lr)


def adam(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_root: float = 1e-20,
    weight_decay: float = 0.0,
) -> InnerOptimizer:
    """Differentiable Adam with a fixed rate.

    Reptile's and MetaNAS's inner loops use ``beta1 = 0``; ``weight_decay`` is coupled L2,
    as in ``torch.optim.Adam``.
    """
    scaled = [ScaleByAdam(betas, eps, eps_root), Scale(-lr)]
    if weight_decay:
        return Chain(AddDecayedWeights(weight_decay), *scaled)
    return Chain(*scaled)


def _learned(shape: RateShape) -> Callable[..., InnerOptimizer]:
    def build(params: Mapping[str, Tensor], lr: float, steps: int = 1) -> InnerOptimizer:
        return LearnedRate(params, lr, shape, steps)

    return build


#: Inner optimizers by name. Every builder takes the adapted parameters, the (initial)
#: rate and the number of inner steps, so a learner can build any of them the same way.
INNER_OPTIMIZERS: Registry[Callable[..., InnerOptimizer]] = Registry("inner optimizer")


def _sgd(
    params: Mapping[str, Tensor], lr: float, steps: int = 1, *, weight_decay: float = 0.0
) -> InnerOptimizer:
    return sgd(lr, weight_decay)


def _adam(
    params: Mapping[str, Tensor],
    lr: float,
    steps: int = 1,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> InnerOptimizer:
    return adam(lr, (float(betas[0]), float(betas[1])), eps, weight_decay=weight_decay)


INNER_OPTIMIZERS.add("sgd", _sgd)
INNER_OPTIMIZERS.add("meta_sgd", _learned("element"))
INNER_OPTIMIZERS.add("per_tensor", _learned("tensor"))
INNER_OPTIMIZERS.add("per_layer_step", _learned("tensor_step"))
INNER_OPTIMIZERS.add("adam", _adam)


def build_inner_optimizer(
    name: str, params: Mapping[str, Tensor], lr: float, steps: int = 1, **options: Any
) -> InnerOptimizer:
    """The inner optimizer registered as ``name`` for the adapted ``params``.

    Raises:
        ValueError: For an option the rule does not take, naming those it does.
    """
    builder = INNER_OPTIMIZERS.get(name)
    signature = inspect.signature(builder)
    known = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"inner optimizer {name!r} takes no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(known) or 'none'})"
        )
    return builder(params, lr, steps=steps, **options)


#: One rule for all adapted parameters (a name), or one per parameter group:
#: ``{weights: sgd, architecture: {name: adam, lr: 0.005, betas: [0, 0.999]}}``.
InnerOptimizerSpec = str | Mapping[str, str | Mapping[str, Any]]


def grouped_inner_optimizer(
    spec: InnerOptimizerSpec | InnerOptimizer,
    groups: Mapping[str, str],
    params: Mapping[str, Tensor],
    lr: float,
    steps: int = 1,
    active: Mapping[str, Callable[[int], bool]] | None = None,
) -> InnerOptimizer:
    """The inner optimizer of ``spec`` for ``params``, whose groups ``groups`` gives.

    A group's rule is a name or ``{name: ..., lr: ..., <the rule's options>}``; ``lr``
    defaults to ``lr``. Every group of the adapted parameters needs a rule. A rule built
    already (an :class:`InnerOptimizer`) is used as it is. ``active`` switches a group's
    rule on only at the inner steps its predicate accepts (:class:`OnSteps`; first-order
    DARTS alternates architecture and weight steps).
    """
    if isinstance(spec, InnerOptimizer):
        return spec
    if isinstance(spec, str):
        return build_inner_optimizer(spec, params, lr, steps)
    missing = sorted({groups[name] for name in params} - set(spec))
    if missing:
        raise ValueError(
            f"inner_optimizer names no rule for parameter group(s) {', '.join(missing)} "
            f"(groups of the adapted parameters: {', '.join(sorted(set(groups.values())))})"
        )
    rules: dict[str, InnerOptimizer] = {}
    for group, rule in spec.items():
        settings: dict[str, Any] = {"name": rule} if isinstance(rule, str) else dict(rule)
        name = settings.pop("name")
        group_lr = float(settings.pop("lr", lr))
        members = {n: p for n, p in params.items() if groups[n] == group}
        rules[group] = build_inner_optimizer(name, members, group_lr, steps, **settings)
        if active is not None and group in active:
            rules[group] = OnSteps(rules[group], active[group])
    return Partition(rules, dict(groups).__getitem__)
