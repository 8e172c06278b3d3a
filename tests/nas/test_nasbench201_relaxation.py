"""The NAS-Bench-201 relaxation: a restricted relaxation is its discrete network, derivation
and pruning, skipping, task-batched = loop at second order, and MetaNAS on it."""

from __future__ import annotations

import pytest
import torch

from metarch.models.groups import model_parameter_groups
from metarch.nas import create_space
from metarch.nas.methods.metanas import MetaNAS
from metarch.nas.spaces.nasbench201 import OPERATIONS
from metarch.nas.spaces.nasbench201_search import NASBench201SearchNetwork
from tests.meta.helpers import make_batch
from tests.nas.relaxation_checks import assert_batched_meta_gradient_equals_the_loop, operations_run

ARCHITECTURE = (
    "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|nor_conv_3x3~2|"
)


def small_relaxation(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    space = create_space("nasbench201", channels=4, cells_per_stage=1, in_channels=1)
    return space.relax(num_classes=3, **options).double()


def test_alpha_is_the_architecture_group_and_derives_the_strongest_operations() -> None:
    model = small_relaxation()
    assert model_parameter_groups(model)["architecture"] == ["backbone.alpha"]
    network = model.get_submodule("backbone")
    assert isinstance(network, NASBench201SearchNetwork)
    space = network.search_space()
    expected = space.decode(ARCHITECTURE)
    with torch.no_grad():
        network.alpha.zero_()
        for edge, op in enumerate(expected):
            network.alpha[edge, OPERATIONS.index(op)] = 1.0
    assert network.genotype() == expected
    assert space.derive(model) == expected
    # A task's adapted alpha, given by name, decides instead of the network's own.
    other = torch.zeros(6, 5)
    other[:, OPERATIONS.index("skip_connect")] = 1.0
    assert network.genotype({"alpha": other}) == ("skip_connect",) * 6


def test_a_relaxation_restricted_to_an_architecture_is_its_discrete_network() -> None:
    space = create_space("nasbench201", channels=4, cells_per_stage=2, in_channels=1)
    architecture = space.decode(ARCHITECTURE)
    torch.manual_seed(0)
    supernet = space.relax(genotype=ARCHITECTURE, init_scale=1.0).double()
    discrete = space.build(architecture).double()
    weights = supernet.state_dict()
    mapped = {}
    for name in discrete.state_dict():
        parts = name.split(".")
        if parts[0] == "cells" and parts[2] == "edges":
            op = OPERATIONS.index(architecture[int(parts[3])])
            name_there = ".".join([*parts[:4], str(op), *parts[4:]])
        else:
            name_there = name
        mapped[name] = weights[name_there]
    discrete.load_state_dict(mapped)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(supernet(x), discrete(x), rtol=1e-10, atol=1e-12)
    assert space.derive(supernet) == architecture
    # Only the architecture's operations run: none never, the others once per cell.
    calls = operations_run(supernet, 4, x)
    runs = sum(op != "none" for op in architecture)
    assert len(calls) == 3 * 2 * runs


def test_pruning_keeps_the_strongest_operation_of_every_edge() -> None:
    network = NASBench201SearchNetwork(channels=4, cells_per_stage=1, init_scale=3.0).double()
    before = network.genotype()
    removed = network.prune(0.5, temperature=0.05)
    assert removed > 0 and network.kept_operations() == 30 - removed
    assert network.genotype() == before  # the argmax of every edge stays
    weights = torch.softmax(network._logits(network.alpha), -1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, dtype=torch.float64))


def test_operations_below_the_threshold_do_not_run_and_get_no_gradient() -> None:
    model = small_relaxation(skip_below=0.5)  # every weight of 5 operations is about 1/5
    batch = make_batch(tasks=1, ways=3)
    x, y = batch.support_images[0], batch.support_labels[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    cell_weights = [p for name, p in model.named_parameters() if ".edges." in name]
    assert cell_weights and all(p.grad is None for p in cell_weights)


@pytest.mark.parametrize(("skip_below", "temperature"), [(0.0, 1.0), (0.15, 0.5)])
def test_batched_meta_gradient_equals_the_loop_at_second_order(
    skip_below: float, temperature: float
) -> None:
    assert_batched_meta_gradient_equals_the_loop(
        lambda: small_relaxation(skip_below=skip_below, init_scale=0.5), temperature
    )


def test_metanas_adapts_a_nasbench201_cell_per_task() -> None:
    model = small_relaxation(init_scale=0.5)
    learner = MetaNAS(
        model,
        steps=2,
        eval_steps=4,
        eval_architecture_steps=2,
        inner_batch_size=4,
        eval_batch_size=4,
        skip_below=0.0,
        eval_skip_below=0.0,
        prune_every=0,
        inner_optimizer={
            "weights": {"name": "adam", "lr": 0.01, "betas": [0.0, 0.999]},
            "architecture": {"name": "adam", "lr": 0.5, "betas": [0.0, 0.999]},
        },
    )
    before = model.get_parameter("backbone.alpha").detach().clone()
    learner.compute_meta_gradients(make_batch(tasks=2, ways=3, shots=4))
    grad = model.get_parameter("backbone.alpha").grad
    assert grad is not None and grad.abs().sum() > 0
    batch = make_batch(tasks=1, ways=3, shots=4)
    adapted = learner.adapt_architecture(batch.support_images[0], batch.support_labels[0])
    space = learner.space((1, 12, 12))
    assert space.encode(space.decode(adapted.predictor.architecture)) == (
        adapted.predictor.architecture
    )
    assert not torch.equal(adapted.params["backbone.alpha"], before)
    assert adapted.predictor(batch.query_images[0]).shape == (batch.query_images.shape[1], 3)
