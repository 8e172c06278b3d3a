"""MetaNAS's few-shot cell space: genotypes as strings and JSON, the networks, batching."""

from __future__ import annotations

import random

import pytest
import torch

from metarch.meta import MAML, Reptile
from metarch.nas import ArchitectureError, create_space
from metarch.nas.ops import FEW_SHOT_OPERATIONS, create_operation
from metarch.nas.spaces.metanas import MetaNASSpace
from tests.meta.helpers import flat_grad, make_batch

#: The genotype MetaNAS's upscaled Omniglot runs use (docs/metanas-reference.md).
OMNIGLOT_V2 = (
    "normal:dil_conv_3x3~0,sep_conv_3x3~1|avg_pool_3x3~0,sep_conv_3x3~1|"
    "conv_1x5_5x1~0,conv_3x3~2;"
    "reduce:skip_connect~0,sep_conv_3x3~1|conv_3x3~0,dil_conv_3x3~1|"
    "dil_conv_3x3~0,conv_1x5_5x1~2"
)


def test_genotypes_round_trip_through_strings_and_json() -> None:
    space = create_space("metanas")
    assert isinstance(space, MetaNASSpace)
    rng = random.Random(0)
    for _ in range(200):
        genotype = space.sample(rng)
        assert space.decode(space.encode(genotype)) == genotype
        assert space.from_json(space.to_json(genotype)) == genotype
    assert space.encode(space.decode(OMNIGLOT_V2)) == OMNIGLOT_V2
    # 3 nodes choosing 2 of 2, 3, 4 inputs and 7 operations per edge, two cells.
    assert space.size() == (1 * 49 * 3 * 49 * 6 * 49) ** 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("normal:conv_3x3~0,conv_3x3~1", "a normal and a reduce cell"),
        (
            OMNIGLOT_V2.replace("dil_conv_3x3~0", "dense_conv~0", 1),
            "unknown operation 'dense_conv'",
        ),
        (OMNIGLOT_V2.replace("conv_3x3~2;", "conv_3x3~9;", 1), "two different inputs from 0..3"),
        (OMNIGLOT_V2.replace("sep_conv_3x3~1|avg", "sep_conv_3x3~0|avg", 1), "two different"),
        (OMNIGLOT_V2.replace("~1|", "|", 1), "op~input"),
    ],
)
def test_bad_genotypes_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ArchitectureError) as info:
        create_space("metanas").decode(text)
    assert words in str(info.value)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", FEW_SHOT_OPERATIONS)
def test_every_operation_keeps_channels_and_scales_by_its_stride(name: str, stride: int) -> None:
    op = create_operation(name, 8, stride)
    out = op(torch.randn(2, 8, 14, 14))
    assert out.shape == (2, 8, 14 // stride, 14 // stride)


def test_conv_3x3_is_depthwise_separable_and_pooling_is_normalised() -> None:
    conv = create_operation("conv_3x3", 8)
    dense = [m for m in conv.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.groups for m in dense] == [8, 1] and dense[1].kernel_size == (1, 1)
    frozen = create_operation("max_pool_3x3", 8, affine=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_the_networks_of_both_data_sets() -> None:
    genotype = create_space("metanas").decode(OMNIGLOT_V2)
    omniglot = create_space("metanas")
    assert omniglot.build(genotype)(torch.randn(2, 1, 28, 28)).shape == (2, 84)
    mini = create_space("metanas", in_channels=3, image_size=84, channels=96, cells=5)
    assert mini.build(genotype, num_classes=5)(torch.randn(1, 3, 84, 84)).shape == (1, 5)
    cost = omniglot.cost(genotype, num_classes=5)
    assert cost.parameters > 0 and cost.flops > 0


@pytest.mark.parametrize("learner", ["maml", "reptile"])
def test_networks_meta_learn_task_batched_as_in_the_loop(learner: str) -> None:
    # Factorized reductions and the cells' concatenations run on the task-grouped layout.
    space = create_space("metanas", channels=4, image_size=12)
    genotype = space.decode(OMNIGLOT_V2)
    grads = []
    for batching in ("loop", "batched"):
        torch.manual_seed(0)
        model = space.build(genotype, num_classes=3).double()
        meta: MAML | Reptile
        if learner == "maml":
            meta = MAML(model, inner_lr=0.1, steps=2, batching=batching)
        else:
            meta = Reptile(model, inner_lr=0.01, steps=2, adam_state="per_task", batching=batching)
        torch.manual_seed(1)
        meta.compute_meta_gradients(make_batch(tasks=3, ways=3))
        assert meta.batching == batching
        grads.append(flat_grad(list(model.parameters())))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)
