"""Searches under budgets: never over budget, reproducible from a seed, fronts, bad budgets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from metarch.models.cost import count_parameters
from metarch.nas.search import (
    Candidate,
    Constraint,
    GeneticSampler,
    NSGA2Sampler,
    RandomSampler,
    Sampler,
    SearchError,
    SearchResult,
    check_budgets,
    pareto_front,
    run_search,
)
from metarch.nas.spaces.elastic_conv import ElasticArchitecture, ElasticConvSpace

SPACE = ElasticConvSpace(channels=8, max_depth=3, in_channels=1, image_size=28)
_PARAMS: dict[str, float] = {}


def parameters(architecture: ElasticArchitecture) -> float:
    key = SPACE.encode(architecture)
    if key not in _PARAMS:
        _PARAMS[key] = float(count_parameters(SPACE.build(architecture)))
    return _PARAMS[key]


def depth_and_width(architecture: ElasticArchitecture) -> float:
    """A stand-in for accuracy: deeper and wider is better, with a preference for 3x3."""
    score = architecture.expansion
    for stage in architecture.stages:
        score += sum(layer.ratio + (0.2 if layer.kernel == 3 else 0.0) for layer in stage)
    return score


def search(
    sampler_class: type[Sampler], seed: int, limit: float, evaluations: int = 60
) -> SearchResult:
    budget = [Constraint("parameters", parameters, limit)]
    sampler = (
        sampler_class(SPACE, budget, seed, population=8)
        if sampler_class in (GeneticSampler, NSGA2Sampler)
        else sampler_class(SPACE, budget, seed)
    )
    return run_search(sampler, depth_and_width, evaluations=evaluations)


def test_nothing_over_budget_is_ever_evaluated_or_returned() -> None:
    limit = parameters(SPACE.largest()) / 4
    for sampler_class in (GeneticSampler, NSGA2Sampler, RandomSampler):
        result = search(sampler_class, 0, limit)
        assert len(result.candidates) == 60
        assert all(c.costs["parameters"] <= limit for c in result.candidates)
        assert result.best.costs["parameters"] <= limit
        assert result.best.fitness == max(c.fitness for c in result.candidates)


def test_evolution_beats_random_search_with_the_same_evaluations() -> None:
    limit = parameters(SPACE.largest()) / 4
    evolved = [search(GeneticSampler, seed, limit).best.fitness for seed in range(3)]
    random_ = [search(RandomSampler, seed, limit).best.fitness for seed in range(3)]
    assert sum(evolved) > sum(random_)


@pytest.mark.parametrize("sampler_class", [GeneticSampler, NSGA2Sampler])
def test_a_search_is_reproducible_from_its_seed(sampler_class: type[Sampler]) -> None:
    limit = parameters(SPACE.largest()) / 3
    first, again = search(sampler_class, 5, limit, 30), search(sampler_class, 5, limit, 30)
    other = search(sampler_class, 6, limit, 30)
    assert [c.text for c in first.candidates] == [c.text for c in again.candidates]
    assert [c.text for c in first.candidates] != [c.text for c in other.candidates]


def test_nsga2_learns_beyond_its_random_first_generation() -> None:
    limit = parameters(SPACE.largest()) / 4
    nsga2 = [search(NSGA2Sampler, seed, limit).best.fitness for seed in range(3)]
    random_ = [search(RandomSampler, seed, limit).best.fitness for seed in range(3)]
    assert sum(nsga2) > sum(random_)


@pytest.mark.parametrize("name", ["elastic-conv", "nasbench201"])
def test_spaces_draw_every_choice_by_name(name: str) -> None:
    import random

    from metarch.nas.spaces.base import SearchSpace
    from metarch.nas.spaces.nasbench201 import NASBench201Space

    space: SearchSpace[Any] = SPACE if name == "elastic-conv" else NASBench201Space()
    offered: dict[str, tuple[object, ...]] = {}
    rng = random.Random(0)

    def choose(choice: str, options: Sequence[object]) -> object:
        # A name offers the same options every time (what Optuna requires).
        assert offered.setdefault(choice, tuple(options)) == tuple(options)
        return rng.choice(list(options))

    drawn = {space.encode(space.draw(choose)) for _ in range(200)}
    assert len(drawn) > 100
    assert all(space.encode(space.decode(text)) == text for text in drawn)


def test_the_front_keeps_exactly_the_undominated() -> None:
    def candidate(fitness: float, cost: float, index: int) -> Candidate:
        return Candidate(None, str(index), fitness, {"latency_ms": cost}, index)

    pool = [candidate(0.5, 1.0, 0), candidate(0.6, 2.0, 1), candidate(0.55, 2.5, 2)]
    pool += [candidate(0.7, 3.0, 3), candidate(0.7, 3.5, 4)]
    assert [c.text for c in pareto_front(pool)] == ["0", "1", "3"]


def test_a_budget_no_network_meets_names_the_smallest_achievable() -> None:
    smallest = parameters(SPACE.smallest())
    with pytest.raises(SearchError, match=f"costs {smallest:g}; raise the budget"):
        check_budgets(SPACE, [Constraint("parameters", parameters, smallest - 1)], SPACE.smallest())
    check_budgets(SPACE, [Constraint("parameters", parameters, smallest)], SPACE.smallest())


def test_spaces_mutate_and_cross_within_themselves() -> None:
    import random

    rng = random.Random(0)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    for _ in range(50):
        child = SPACE.mutate(SPACE.crossover(a, b, rng), rng, 0.5)
        assert SPACE.decode(SPACE.encode(child)) == child
    assert SPACE.mutate(a, rng, 0.0) == a


def test_random_search_finds_networks_near_the_smallest() -> None:
    # A budget few uniform draws meet: at most one step above the smallest network.
    smallest = depth_and_width(SPACE.smallest())
    budget = [Constraint("size", depth_and_width, smallest + 0.3)]
    result = run_search(RandomSampler(SPACE, budget, 0), depth_and_width, evaluations=3)
    assert result.candidates and all(c.costs["size"] <= smallest + 0.3 for c in result.candidates)


def test_a_time_limit_stops_evaluating_and_keeps_what_was_evaluated() -> None:
    limit = parameters(SPACE.largest()) / 3
    calls: list[float] = []

    def slow(architecture: ElasticArchitecture) -> float:
        calls.append(1.0)
        return depth_and_width(architecture)

    budget = [Constraint("parameters", parameters, limit)]
    # A limit already spent still evaluates one architecture, so a result exists.
    result = run_search(RandomSampler(SPACE, budget, 0), slow, evaluations=30, seconds=0.0)
    assert len(result.candidates) == 1 == len(calls)
    # A limit not reached changes nothing: the seed alone decides the search.
    timed = run_search(RandomSampler(SPACE, budget, 0), depth_and_width, evaluations=30,
                       seconds=3600.0)  # fmt: skip
    untimed = search(RandomSampler, 0, limit, 30)
    assert [c.text for c in timed.candidates] == [c.text for c in untimed.candidates]
