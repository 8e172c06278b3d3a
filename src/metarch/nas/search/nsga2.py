"""Optuna's NSGA-II behind our ask/tell interface (``SAMPLERS["nsga2"]``).

Each proposal is an Optuna trial: the space builds the architecture from named categorical
choices (:meth:`SearchSpace.draw <metarch.nas.spaces.base.SearchSpace.draw>`, driven by
``trial.suggest_categorical``). Objectives: the fitness (maximised) and, where budgets are
given, the first budget's cost (minimised), so NSGA-II keeps its own Pareto front; the
budgets are Optuna constraints (``cost - limit <= 0``).

What our interface adds: proposals over a budget are told to Optuna as infeasible at once
(with the worst fitness) and never proposed, and an architecture already evaluated is told
its known result instead of being proposed again; a proposal the search did not evaluate
(the evaluation budget ran out) is told as failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from metarch.nas.search.base import SAMPLERS, Candidate, Constraint, Sampler
from metarch.nas.spaces.base import SearchSpace

__all__ = ["NSGA2Sampler"]


@SAMPLERS.register("nsga2")
class NSGA2Sampler(Sampler):
    """Optuna's NSGA-II (Deb et al., 2002) over the space's named choices.

    Args:
        population: NSGA-II's population size (candidates per generation).
        mutation: Probability of redrawing each choice of a child (default: Optuna's,
            ``1 / choices``).
        crossover: Probability of crossing two parents over (else a parent is copied).
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        constraints: Sequence[Constraint],
        seed: int = 0,
        *,
        population: int = 16,
        mutation: float | None = None,
        crossover: float = 0.9,
    ) -> None:
        import optuna  # imported here: only searches that ask for NSGA-II need it

        super().__init__(space, constraints, seed)
        if population < 2 or not 0.0 <= crossover <= 1.0:
            raise ValueError(
                f"need population >= 2 and 0 <= crossover <= 1; got {population}, {crossover}"
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        sampler = optuna.samplers.NSGAIISampler(
            population_size=population,
            mutation_prob=mutation,
            crossover_prob=crossover,
            seed=seed,
        )
        directions: list[Literal["maximize", "minimize"]] = ["maximize"]
        if self.constraints:
            directions.append("minimize")
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._pending: dict[str, list[Any]] = {}
        self._known: dict[str, list[float]] = {}

    def ask(self, count: int) -> list[Any]:  # noqa: D102
        proposals: list[Any] = []
        for _ in range(100 * max(count, 1)):
            if len(proposals) >= count:
                break
            trial = self.study.ask()
            architecture = self.space.draw(trial.suggest_categorical)
            text = self.space.encode(architecture)
            if not self.feasible(architecture):
                self._finish(trial, architecture, [0.0, *self._objective_costs(architecture)])
            elif text in self._known:
                self._finish(trial, architecture, self._known[text])
            else:
                if text not in self._pending:
                    proposals.append(architecture)
                self._pending.setdefault(text, []).append((trial, architecture))
        if not proposals:  # NSGA-II keeps drawing known or infeasible networks
            proposals.append(self.sample_feasible())
        return proposals

    def tell(self, candidates: Sequence[Candidate]) -> None:  # noqa: D102
        for candidate in candidates:
            values = [candidate.fitness, *self._objective_costs(candidate.architecture)]
            self._known[candidate.text] = values
        # Every trial of this round gets an answer: its result, or failed if not evaluated.
        for text, trials in self._pending.items():
            for trial, architecture in trials:
                if text in self._known:
                    self._finish(trial, architecture, self._known[text])
                else:
                    self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        self._pending.clear()

    def _objective_costs(self, architecture: Any) -> list[float]:
        return [self.constraints[0].cost(architecture)] if self.constraints else []

    def _finish(self, trial: Any, architecture: Any, values: list[float]) -> None:
        for constraint in self.constraints:
            trial.set_constraint(constraint.name, constraint.cost(architecture) - constraint.limit)
        self.study.tell(trial, values[: len(self.study.directions)])
