"""Searches over a space's architectures under constraints: the interface and the loop.

A search is a sampler behind a small ask/tell interface (Optuna's shape):
:meth:`Sampler.ask` proposes architectures that meet every constraint,
:meth:`Sampler.tell` reports their fitness. :func:`run_search` drives one for a number of
evaluations, caches fitness by canonical string (an architecture is never evaluated
twice), and keeps every evaluated candidate, so the whole accuracy/cost Pareto front comes
back with the best one.

Constraints are costs with limits (latency on a device by any latency model, parameters,
FLOPs): a sampler only proposes architectures within every limit, so the result can never
be over budget by the models it was given. A budget no architecture meets is refused up
front, naming the smallest achievable cost.
"""

from __future__ import annotations

import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metarch.errors import MetarchError
from metarch.nas.spaces.base import SearchSpace
from metarch.registry import Registry

__all__ = [
    "SAMPLERS",
    "Candidate",
    "Constraint",
    "Sampler",
    "SearchError",
    "SearchResult",
    "check_budgets",
    "pareto_front",
    "run_search",
]


class SearchError(MetarchError):
    """A search that cannot run: a budget nothing meets, a space it cannot sample."""


@dataclass(frozen=True)
class Constraint:
    """A cost of an architecture and the most it may be.

    Attributes:
        name: What it is (``latency_ms``, ``parameters``, ``flops``).
        cost: The architecture's cost.
        limit: The budget.
    """

    name: str
    cost: Callable[[Any], float]
    limit: float

    def holds(self, architecture: Any) -> bool:
        """Whether ``architecture`` is within the budget."""
        return self.cost(architecture) <= self.limit


@dataclass
class Candidate:
    """One evaluated architecture.

    Attributes:
        architecture: The architecture.
        text: Its canonical string.
        fitness: What the search maximises (accuracy after adaptation).
        costs: Every constraint's cost of it.
        evaluation: When it was evaluated (0-based).
    """

    architecture: Any
    text: str
    fitness: float
    costs: dict[str, float]
    evaluation: int

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the architecture as its string)."""
        return {
            "architecture": self.text,
            "fitness": self.fitness,
            "costs": self.costs,
            "evaluation": self.evaluation,
        }


class Sampler(ABC):
    """Proposes architectures within the constraints; learns from their fitness.

    Args:
        space: The search space.
        constraints: Budgets every proposal meets.
        seed: Seed of all its random choices.
    """

    def __init__(
        self, space: SearchSpace[Any], constraints: Sequence[Constraint], seed: int = 0
    ) -> None:
        self.space = space
        self.constraints = list(constraints)
        self.rng = random.Random(seed)

    def feasible(self, architecture: Any) -> bool:
        """Whether ``architecture`` meets every constraint."""
        return all(constraint.holds(architecture) for constraint in self.constraints)

    def sample_feasible(self, attempts: int = 2000) -> Any:
        """A random architecture within every budget.

        Uniform draws first; where a budget is so tight that ``attempts`` draws all miss
        it (close to the smallest network), random draws are crossed with the smallest
        network until they fit: still random, but biased towards the smallest.

        Raises:
            SearchError: None found.
        """
        for _ in range(attempts):
            architecture = self.space.sample(self.rng)
            if self.feasible(architecture):
                return architecture
        try:
            smallest = self.space.smallest()
        except NotImplementedError:
            smallest = None
        if smallest is not None and self.feasible(smallest):
            for _ in range(attempts):
                architecture = self.space.sample(self.rng)
                for _ in range(20):
                    if self.feasible(architecture):
                        return architecture
                    architecture = self.space.crossover(architecture, smallest, self.rng)
            return smallest
        raise SearchError(
            f"no architecture within {_budgets(self.constraints)} in {attempts} random draws; "
            "raise the budget"
        )

    @abstractmethod
    def ask(self, count: int) -> list[Any]:
        """Up to ``count`` architectures to evaluate next (each within every budget)."""

    def tell(self, candidates: Sequence[Candidate]) -> None:  # noqa: B027
        """The fitness of architectures it proposed (default: nothing to learn)."""


#: Samplers by name: ``SAMPLERS.get("evolution")(space, constraints, seed, **options)``.
SAMPLERS: Registry[type[Sampler]] = Registry("search sampler")


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        best: The fittest candidate (ties: the cheaper by the first constraint).
        front: Candidates no other one beats in fitness and every cost at once.
        candidates: Every evaluated candidate, in evaluation order.
        constraints: The budgets (name and limit).
    """

    best: Candidate
    front: list[Candidate]
    candidates: list[Candidate] = field(default_factory=list)
    constraints: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON object of the whole result."""
        return {
            "best": self.best.to_json(),
            "front": [c.to_json() for c in self.front],
            "candidates": [c.to_json() for c in self.candidates],
            "constraints": self.constraints,
        }


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates not dominated (fitness at least, every cost at most, one strictly).

    Sorted by the first cost (cheapest first), then fitness.
    """

    def dominates(a: Candidate, b: Candidate) -> bool:
        no_worse = a.fitness >= b.fitness and all(a.costs[k] <= b.costs[k] for k in b.costs)
        better = a.fitness > b.fitness or any(a.costs[k] < b.costs[k] for k in b.costs)
        return no_worse and better

    front = [c for c in candidates if not any(dominates(o, c) for o in candidates)]
    first = next(iter(candidates[0].costs), None) if candidates else None
    return sorted(front, key=lambda c: (c.costs.get(first, 0.0) if first else 0.0, -c.fitness))


#: Spaces of at most this many networks are enumerated to find the cheapest.
ENUMERABLE = 100_000


def check_budgets(
    space: SearchSpace[Any], constraints: Sequence[Constraint], smallest: Any
) -> None:
    """Refuse budgets that even the space's smallest network misses, naming its costs.

    ``smallest`` is the cheapest network by parameters and FLOPs; a measured latency need
    not be smallest there, so in a space small enough to enumerate (NAS-Bench-201's 15,625
    cells) a budget it misses is checked against every network before it is refused.

    Raises:
        SearchError: Saying which budget, and the smallest achievable cost.
    """
    for constraint in constraints:
        cheapest = constraint.cost(smallest)
        size = space.size()
        if cheapest > constraint.limit and size is not None and size <= ENUMERABLE:
            with contextlib.suppress(NotImplementedError):  # a space without enumerate()
                smallest = min(space.enumerate(), key=constraint.cost)
                cheapest = constraint.cost(smallest)
        if cheapest > constraint.limit:
            raise SearchError(
                f"no network of the {space.registered_name} space meets {constraint.name} <= "
                f"{constraint.limit:g}: its smallest network ({space.encode(smallest)}) costs "
                f"{cheapest:g}; raise the budget to at least that"
            )


def run_search(
    sampler: Sampler,
    fitness: Callable[[Any], float],
    *,
    evaluations: int,
    batch: int = 8,
    on_evaluated: Callable[[Candidate, int], None] | None = None,
    seconds: float | None = None,
) -> SearchResult:
    """Evaluate up to ``evaluations`` distinct architectures the sampler proposes.

    Args:
        sampler: Proposes architectures within the budgets.
        fitness: What to maximise (accuracy after adaptation on validation tasks).
        evaluations: Distinct architectures to evaluate.
        batch: Proposals asked for at a time.
        on_evaluated: Called with each new candidate and the number evaluated so far.
        seconds: Evaluate no new architecture once this much time has passed (at least one
            is evaluated); the result is then the best of fewer, and depends on speed.
    """
    space = sampler.space
    seen: dict[str, Candidate] = {}
    stale = 0
    started = time.perf_counter()

    def out_of_time() -> bool:
        return seconds is not None and bool(seen) and time.perf_counter() - started >= seconds

    while len(seen) < evaluations and stale < 20 and not out_of_time():
        proposals = sampler.ask(min(batch, evaluations - len(seen)))
        fresh = []
        for architecture in proposals:
            text = space.encode(architecture)
            if text in seen or len(seen) >= evaluations or out_of_time():
                continue
            candidate = Candidate(
                architecture=architecture,
                text=text,
                fitness=float(fitness(architecture)),
                costs={c.name: float(c.cost(architecture)) for c in sampler.constraints},
                evaluation=len(seen),
            )
            seen[text] = candidate
            fresh.append(candidate)
            if on_evaluated is not None:
                on_evaluated(candidate, len(seen))
        stale = 0 if fresh else stale + 1  # a sampler that only repeats itself: stop
        sampler.tell(fresh)
    candidates = list(seen.values())
    if not candidates:
        raise SearchError("the search evaluated no architecture")
    first = sampler.constraints[0].name if sampler.constraints else None
    best = max(candidates, key=lambda c: (c.fitness, -(c.costs[first] if first else 0.0)))
    return SearchResult(
        best=best,
        front=pareto_front(candidates),
        candidates=candidates,
        constraints={c.name: c.limit for c in sampler.constraints},
    )


def _budgets(constraints: Sequence[Constraint]) -> str:
    return ", ".join(f"{c.name} <= {c.limit:g}" for c in constraints) or "no budget"
