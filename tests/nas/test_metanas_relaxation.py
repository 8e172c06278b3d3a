"""MetaNAS's relaxation: mixed operations, pairwise input weights, the temperature of the
forward context, skipping weak operations, and the same meta-gradients task-batched."""

from __future__ import annotations

import pytest
import torch

from metarch.meta import Reptile
from metarch.models.context import forward_context
from metarch.models.groups import model_parameter_groups
from metarch.nas import create_space
from metarch.nas.ops import FEW_SHOT_OPERATIONS
from metarch.nas.spaces.metanas_search import MetaNASSearchNetwork, input_pairs
from tests.meta.helpers import flat_grad, make_batch
from tests.nas.relaxation_checks import assert_batched_meta_gradient_equals_the_loop

OPS = len(FEW_SHOT_OPERATIONS)


def small_relaxation(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    space = create_space("metanas", channels=4, image_size=12)
    return space.relax(num_classes=3, **options).double()


def test_architecture_parameters_are_their_own_group() -> None:
    groups = model_parameter_groups(small_relaxation())
    assert sorted(groups["architecture"]) == sorted(
        f"backbone.{kind}_{cell}.{node}"
        for kind in ("alpha", "beta")
        for cell in ("normal", "reduce")
        for node in range(3)
    )
    network = MetaNASSearchNetwork(channels=4)
    shapes = {name: tuple(p.shape) for name, p in network.named_parameters()}
    assert [shapes[f"beta_normal.{node}"] for node in range(3)] == [(1,), (3,), (6,)]
    assert [shapes[f"alpha_reduce.{node}"] for node in range(3)] == [(2, OPS), (3, OPS), (4, OPS)]


def test_the_derived_genotype_follows_the_architecture_weights() -> None:
    space = create_space("metanas", channels=4, image_size=12)
    network = MetaNASSearchNetwork(channels=4)
    genotype = space.decode(
        "normal:conv_3x3~0,sep_conv_3x3~1|avg_pool_3x3~0,dil_conv_3x3~2|skip_connect~1,conv_1x5_5x1~3;"
        "reduce:max_pool_3x3~0,conv_3x3~1|conv_3x3~1,sep_conv_3x3~2|dil_conv_3x3~0,skip_connect~2"
    )
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            for node, edges in enumerate(getattr(genotype, kind)):
                sources = tuple(source for _, source in edges)
                network.get_parameter(f"beta_{kind}.{node}")[input_pairs(node).index(sources)] = 5.0
                for op, source in edges:
                    alpha = network.get_parameter(f"alpha_{kind}.{node}")
                    alpha[source, FEW_SHOT_OPERATIONS.index(op)] = 5.0
    assert network.genotype() == genotype
    assert space.derive(space.relax()) is not None


def test_the_temperature_sharpens_the_mixture() -> None:
    model = small_relaxation(init_scale=1.0)
    x = make_batch(tasks=1, ways=3).support_images[0]
    with torch.no_grad():
        outputs = []
        for temperature in (1.0, 0.05):
            with forward_context(temperature=temperature):
                outputs.append(model(x))
    assert not torch.allclose(outputs[0], outputs[1])


def test_operations_below_the_threshold_do_not_run_and_get_no_gradient() -> None:
    model = small_relaxation(skip_below=0.5)  # every weight of 7 operations is about 1/7
    x, y = (
        make_batch(tasks=1, ways=3).support_images[0],
        make_batch(tasks=1, ways=3).support_labels[0],
    )
    torch.nn.functional.cross_entropy(model(x), y).backward()
    cell_weights = [
        p for name, p in model.named_parameters() if ".edges." in name and p.requires_grad
    ]
    assert cell_weights and all(p.grad is None for p in cell_weights)


@pytest.mark.parametrize(("skip_below", "temperature"), [(0.0, 1.0), (0.12, 0.5)])
def test_batched_meta_gradient_equals_the_loop_at_second_order(
    skip_below: float, temperature: float
) -> None:
    assert_batched_meta_gradient_equals_the_loop(
        lambda: small_relaxation(skip_below=skip_below, init_scale=0.5), temperature
    )


@pytest.mark.parametrize("weights_rule", ["adam", "sgd"])
def test_reptile_with_an_optimizer_per_group_on_the_relaxation(weights_rule: str) -> None:
    # MetaNAS's inner loop: Adam (beta1 = 0) for the weights, a faster Adam with weight
    # decay for the architecture; the carried state covers exactly the Adams' parameters,
    # and the task-batched meta-gradient equals the loop's.
    spec = {
        "weights": {"name": weights_rule, "betas": [0.0, 0.999]}
        if weights_rule == "adam"
        else "sgd",
        "architecture": {"name": "adam", "lr": 0.005, "betas": [0.0, 0.999], "weight_decay": 1e-3},
    }
    grads, moments = [], []
    for batching in ("loop", "batched"):
        model = small_relaxation(init_scale=0.5)
        learner = Reptile(
            model,
            inner_lr=0.01,
            steps=3,
            inner_batch_size=4,
            inner_optimizer=spec,
            batching=batching,
        )
        architecture = [n for n in learner.adapt_names if ".alpha_" in n or ".beta_" in n]
        expected = learner.adapt_names if weights_rule == "adam" else architecture
        assert learner._carried_names == expected
        torch.manual_seed(0)
        learner.compute_meta_gradients(make_batch(tasks=3, ways=3))
        assert learner.batching == batching
        grads.append(flat_grad([p for p in model.parameters() if p.requires_grad]))
        moments.append(learner.get_buffer("inner_adam_second_moment").clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(moments[1], moments[0], rtol=1e-7, atol=1e-14)
    assert moments[0].abs().sum() > 0
