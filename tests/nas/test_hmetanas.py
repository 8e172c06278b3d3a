"""The elastic-conv supernet and H-Meta-NAS: sub-networks against the supernet they came from,
meta-gradients against the supernet run as each sub-network, resuming, adapting."""

from __future__ import annotations

import random

import pytest
import torch

from metarch.meta import MAML
from metarch.models import FewShotClassifier
from metarch.nas.methods.hmetanas import HMetaNAS, select_tasks
from metarch.nas.spaces.elastic_conv_supernet import ElasticConvSupernet
from metarch.nas.spaces.nasbench201_supernet import NASBench201Supernet
from metarch.nas.spaces.supernet import (
    SubnetLinear,
    extract_subnet,
    subnet_context,
    supernet_classifier,
)
from tests.meta.helpers import flat_grad, make_batch

SIZE = 16


def supernet_model(ways: int = 3) -> FewShotClassifier:
    torch.manual_seed(0)
    supernet = ElasticConvSupernet(channels=4, max_depth=2, in_channels=1, image_size=SIZE)
    return FewShotClassifier(supernet, ways, (1, SIZE, SIZE)).double()


SUPERNETS = {
    "elastic-maxpool": lambda: ElasticConvSupernet(
        channels=8, max_depth=3, in_channels=1, image_size=SIZE, downsample="maxpool"
    ),
    "elastic-stride": lambda: ElasticConvSupernet(
        channels=8, max_depth=3, in_channels=1, image_size=SIZE, downsample="stride"
    ),
    "nasbench201": lambda: NASBench201Supernet(
        channels=4, cells_per_stage=2, in_channels=1, image_size=SIZE
    ),
}


@pytest.mark.parametrize("name", SUPERNETS)
def test_a_subnetwork_computes_what_the_supernet_computes_as_it(name: str) -> None:
    torch.manual_seed(0)
    supernet = SUPERNETS[name]()
    model = supernet_classifier(supernet, 5)
    x = torch.rand(6, 1, SIZE, SIZE)
    space = supernet.space
    for architecture in [space.largest(), space.smallest()] + [
        space.sample(random.Random(seed)) for seed in range(6)
    ]:
        with subnet_context(architecture):
            expected = model(x)
        subnet = extract_subnet(model, architecture)
        assert torch.equal(subnet(x), expected)
        # Only the sub-network's own weights are carried: the discrete network's.
        assert sum(p.numel() for p in subnet.parameters()) == sum(
            p.numel() for p in space.build(architecture, num_classes=5).parameters()
        )
    # Without a context the supernet is its largest network.
    assert torch.equal(model(x), extract_subnet(model, space.largest())(x))


def test_meta_gradients_equal_the_supernet_run_as_each_subnetwork() -> None:
    batch = make_batch(tasks=4, ways=3, size=SIZE)
    learner = HMetaNAS(supernet_model(), steps=2, inner_lr=0.3, sandwich=3, batching="batched")
    learner.compute_meta_gradients(batch)
    got = flat_grad(list(learner.model.parameters()))

    # Reference: autograd through the supernet's own slicing, one sub-network at a time.
    reference = supernet_model()
    reference.head = SubnetLinear(reference.head.in_features, 3).double()
    reference.load_state_dict(learner.model.state_dict())
    for architecture, share in zip(learner.subnets(0), [[0, 3], [1], [2]], strict=True):
        inner = MAML(reference, inner_lr=0.3, steps=2, norm_policy="batch", batching="loop")
        before = flat_grad(list(reference.parameters())).clone()
        with subnet_context(architecture):
            inner.compute_meta_gradients(select_tasks(batch, share))
        after = flat_grad(list(reference.parameters()))
        # MAML averages over its tasks; H-Meta-NAS weighs each share by its tasks.
        for p in reference.parameters():
            p.grad = None
        delta = (after - before) * len(share) / 4
        offset = 0
        for p in reference.parameters():
            p.grad = (before + delta)[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    expected = flat_grad(list(reference.parameters()))
    assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()
    assert learner.meta_iterations == 1


def test_the_sandwich_is_largest_smallest_then_seeded_random_ones() -> None:
    learner = HMetaNAS(supernet_model(), sandwich=4, seed=3)
    first = learner.subnets(5)
    assert first[:2] == [learner.space.largest(), learner.space.smallest()]
    assert first == learner.subnets(5) and first != learner.subnets(6)
    assert HMetaNAS(supernet_model(), sandwich=4, seed=4).subnets(5) != first


def test_adapting_uses_the_chosen_subnetwork() -> None:
    learner = HMetaNAS(supernet_model(), steps=1, eval_steps=3)
    batch = make_batch(tasks=1, ways=3, size=SIZE)
    smallest = learner.space.encode(learner.space.smallest())
    learner.use_architecture(smallest)
    predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
    assert predictor.architecture == smallest
    assert predictor(batch.query_images[0]).shape == (9, 3)
    accuracy = learner.evaluate(batch)
    assert accuracy.shape == (1,)


def test_a_model_without_a_supernet_is_refused() -> None:
    from tests.meta.helpers import tiny_classifier

    with pytest.raises(ValueError, match="weight-sharing supernet"):
        HMetaNAS(tiny_classifier())


def nasbench201_model(ways: int = 3) -> FewShotClassifier:
    torch.manual_seed(0)
    supernet = NASBench201Supernet(channels=4, cells_per_stage=1, in_channels=1, image_size=SIZE)
    return FewShotClassifier(supernet, ways, (1, SIZE, SIZE)).double()


def test_nasbench201_meta_gradients_equal_autograd_through_the_one_shot_supernet() -> None:
    batch = make_batch(tasks=2, ways=3, size=SIZE)
    learner = HMetaNAS(nasbench201_model(), steps=1, inner_lr=0.3, sandwich=2, batching="loop")
    learner.compute_meta_gradients(batch)
    got = flat_grad(list(learner.model.parameters()))

    reference = nasbench201_model()
    reference.head = SubnetLinear(reference.head.in_features, 3).double()
    reference.load_state_dict(learner.model.state_dict())
    subnets = learner.subnets(0)
    assert subnets[0] == learner.space.largest()
    expected = torch.zeros_like(got)
    for architecture, share in zip(subnets, [[0], [1]], strict=True):
        for p in reference.parameters():
            p.grad = None
        inner = MAML(reference, inner_lr=0.3, steps=1, norm_policy="batch", batching="loop")
        with subnet_context(architecture):
            inner.compute_meta_gradients(select_tasks(batch, share))
        # MAML's mean over its one task; the share is 1 task of 2. Operations a
        # sub-network did not run get no gradient from it (zeros).
        expected += 0.5 * flat_grad(list(reference.parameters()))
    assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()
