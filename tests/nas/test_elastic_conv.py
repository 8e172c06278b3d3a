"""The elastic Conv-4-like space: strings, sizes, networks and their layers."""

from __future__ import annotations

import random

import pytest
import torch

from metarch.hardware.check import distinct_samples
from metarch.models.cost import count_parameters, flops_per_image
from metarch.nas import ArchitectureError
from metarch.nas.spaces.elastic_conv import ElasticConvSpace

SPACE = ElasticConvSpace(channels=8, max_depth=2, in_channels=1, image_size=28)


def test_strings_round_trip_and_name_the_choices() -> None:
    rng = random.Random(0)
    for _ in range(50):
        architecture = SPACE.sample(rng)
        text = SPACE.encode(architecture)
        assert SPACE.decode(text) == architecture
        assert SPACE.from_json(SPACE.to_json(architecture)) == architecture
    largest = ElasticConvSpace().largest()
    assert ElasticConvSpace().encode(largest) == "e2|" + "|".join(["k5w1,k5w1,k5w1"] * 4)
    assert SPACE.size() == 3 * (6 + 36) ** 4


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("e1|k3w1|k3w1|k3w1", "4 stages"),
        ("e3|k3w1|k3w1|k3w1|k3w1", "expansion '3'"),
        ("e1|k7w1|k3w1|k3w1|k3w1", "kernel '7'"),
        ("e1|k3w0.6|k3w1|k3w1|k3w1", "ratio '0.6'"),
        ("e1|k3|k3w1|k3w1|k3w1", "k<kernel>w<ratio>"),
        ("e1|k3w1,k3w1,k3w1|k3w1|k3w1|k3w1", "allows 1 to 2"),
    ],
)
def test_bad_strings_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ArchitectureError, match=words):
        SPACE.decode(text)


def test_the_largest_network_is_conv4_deepened() -> None:
    space = ElasticConvSpace(in_channels=1, image_size=28, max_depth=1)
    network = space.build(space.largest(), num_classes=5)
    # Conv-4 with 5x5 kernels: 64 channels in every stage, 64 features on 28x28 images.
    assert network(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert space.build(space.largest()).out_features == 64
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 4 and {c.kernel_size for c in convs} == {
        (5, 5)
    }


STRIDED = ElasticConvSpace(
    channels=8, max_depth=2, in_channels=1, image_size=28, downsample="stride"
)


@pytest.mark.parametrize("space", [SPACE, STRIDED], ids=["maxpool", "stride"])
def test_the_layers_of_a_network_add_up_to_it(space: ElasticConvSpace) -> None:
    for architecture in [*distinct_samples(space, 6, seed=2), space.largest(), space.smallest()]:
        network = space.build(architecture, num_classes=5)
        layers = space.layers(architecture, num_classes=5)
        assert sum(count_parameters(layer.build()) for layer in layers) == count_parameters(network)
        assert sum(flops_per_image(layer.build(), layer.input_shape) for layer in layers) == (
            flops_per_image(network, space.input_shape)
        )
        assert len(layers) == sum(len(stage) for stage in architecture.stages) + 1


@pytest.mark.parametrize("space", [SPACE, STRIDED], ids=["maxpool", "stride"])
def test_the_catalogue_holds_every_layer_once(space: ElasticConvSpace) -> None:
    catalogue = [layer.key for layer in space.layer_catalogue(num_classes=5)]
    assert len(catalogue) == len(set(catalogue))
    for architecture in distinct_samples(space, 40, seed=3):
        assert {layer.key for layer in space.layers(architecture, num_classes=5)} <= set(catalogue)


def test_strided_networks_halve_the_image_in_each_stage_and_cost_less() -> None:
    # 28 -> 14 -> 7 -> 4 -> 2, as MAML's strided Omniglot network.
    assert STRIDED.build(STRIDED.largest()).out_features == 16 * 2 * 2
    architecture = SPACE.sample(random.Random(5))
    strided = flops_per_image(STRIDED.build(architecture), STRIDED.input_shape)
    assert strided < flops_per_image(SPACE.build(architecture), SPACE.input_shape) / 2


def test_too_small_images_are_refused() -> None:
    with pytest.raises(ArchitectureError, match="at least 16"):
        ElasticConvSpace(image_size=8)
