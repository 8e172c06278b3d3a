"""Architecture search under budgets: samplers behind ask/tell, the loop, Pareto fronts.

Layout:
    base.py       the interface (Sampler: ask/tell), constraints, candidates, the loop
                  (run_search) and the Pareto front
    evolution.py  the samplers, in SAMPLERS: "evolution" (our genetic algorithm) and
                  "random" (the baseline)

A new sampler: subclass :class:`~metarch.nas.search.base.Sampler` in a module here and
register it in :data:`SAMPLERS`.
"""

from metarch.nas.search.base import (
    Candidate,
    Constraint,
    Sampler,
    SearchError,
    SearchResult,
    check_budgets,
    pareto_front,
    run_search,
)
from metarch.nas.search.evolution import SAMPLERS, GeneticSampler, RandomSampler

__all__ = [
    "SAMPLERS",
    "Candidate",
    "Constraint",
    "GeneticSampler",
    "RandomSampler",
    "Sampler",
    "SearchError",
    "SearchResult",
    "check_budgets",
    "pareto_front",
    "run_search",
]
