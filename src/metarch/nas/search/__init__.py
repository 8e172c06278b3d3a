"""Architecture search under budgets: samplers behind ask/tell, the loop, Pareto fronts.

Layout:
    base.py       the interface (Sampler: ask/tell), constraints, candidates, the loop
                  (run_search) and the Pareto front
    evolution.py  samplers "evolution" (our genetic algorithm) and "random" (the baseline)
    nsga2.py      sampler "nsga2" (Optuna's NSGA-II, multi-objective with constraints)

A new sampler: subclass :class:`~metarch.nas.search.base.Sampler` in a module here and
register it in :data:`SAMPLERS`.
"""

from metarch.nas.search.base import (
    SAMPLERS,
    Candidate,
    Constraint,
    Sampler,
    SearchError,
    SearchResult,
    check_budgets,
    pareto_front,
    run_search,
)
from metarch.nas.search.evolution import GeneticSampler, RandomSampler
from metarch.nas.search.nsga2 import NSGA2Sampler

__all__ = [
    "SAMPLERS",
    "Candidate",
    "Constraint",
    "GeneticSampler",
    "NSGA2Sampler",
    "RandomSampler",
    "Sampler",
    "SearchError",
    "SearchResult",
    "check_budgets",
    "pareto_front",
    "run_search",
]
