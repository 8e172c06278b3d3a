"""Samplers: an evolutionary search (our genetic algorithm) and random search.

The genetic algorithm keeps the ``population`` fittest candidates seen so far; each
generation's children are crossovers of two parents chosen by tournament, then mutated
(each choice redrawn with probability ``mutation``), and kept only if they meet every
budget (a child that does not is redrawn, then replaced by a random feasible architecture).
The first generation is random. Random search proposes random feasible architectures:
the baseline with the same number of evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metarch.nas.search.base import SAMPLERS, Candidate, Constraint, Sampler
from metarch.nas.spaces.base import SearchSpace

__all__ = ["GeneticSampler", "RandomSampler"]


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Random architectures within every budget."""

    def ask(self, count: int) -> list[Any]:  # noqa: D102
        return [self.sample_feasible() for _ in range(count)]


@SAMPLERS.register("evolution")
class GeneticSampler(Sampler):
    """A genetic algorithm over the space's architectures (see the module docstring).

    Args:
        population: Candidates kept as parents (and the first, random generation's size).
        mutation: Probability of redrawing each choice of a child.
        tournament: Candidates drawn per parent choice (the fittest wins).
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        constraints: Sequence[Constraint],
        seed: int = 0,
        *,
        population: int = 16,
        mutation: float = 0.2,
        tournament: int = 3,
    ) -> None:
        super().__init__(space, constraints, seed)
        if population < 2 or not 0.0 <= mutation <= 1.0 or tournament < 1:
            raise ValueError(
                "need population >= 2, 0 <= mutation <= 1 and tournament >= 1; got "
                f"{population}, {mutation} and {tournament}"
            )
        self.population = population
        self.mutation = mutation
        self.tournament = tournament
        self.parents: list[Candidate] = []

    def ask(self, count: int) -> list[Any]:  # noqa: D102
        if len(self.parents) < 2:
            return [self.sample_feasible() for _ in range(max(count, self.population))]
        return [self._child() for _ in range(count)]

    def tell(self, candidates: Sequence[Candidate]) -> None:  # noqa: D102
        pool = self.parents + list(candidates)
        pool.sort(key=lambda c: (-c.fitness, c.evaluation))
        self.parents = pool[: self.population]

    def _pick(self) -> Candidate:
        drawn = [self.rng.choice(self.parents) for _ in range(self.tournament)]
        return max(drawn, key=lambda c: (c.fitness, -c.evaluation))

    def _child(self, attempts: int = 50) -> Any:
        for _ in range(attempts):
            child = self.space.crossover(
                self._pick().architecture, self._pick().architecture, self.rng
            )
            child = self.space.mutate(child, self.rng, self.mutation)
            if self.feasible(child):
                return child
        return self.sample_feasible()
