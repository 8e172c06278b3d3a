"""Costs of a network that does not depend on a device: peak activation memory."""

from __future__ import annotations

import random

import torch
from torch import nn

from metarch.models.cost import peak_activation_bytes
from metarch.nas.spaces.elastic_conv import ElasticConvSpace

FLOAT = 4


def test_peak_memory_of_a_chain_counts_what_is_alive_at_once() -> None:
    # 1x8x8 input (256 B), two 8x8x8 maps (2 KiB each), one 4x8x8 map (1 KiB).
    chain = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    # Peak at the ReLU: the input, the convolution's output and the ReLU's own.
    assert peak_activation_bytes(chain, (1, 8, 8)) == FLOAT * (64 + 512 + 512)
    # An in-place ReLU writes over its input: the second convolution's output is the peak.
    in_place = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),  # a view: no new memory
        nn.Linear(256, 5),
    )
    assert peak_activation_bytes(in_place, (1, 8, 8)) == FLOAT * (64 + 512 + 256)


def test_peak_memory_grows_with_the_network_and_leaves_it_as_it_was() -> None:
    space = ElasticConvSpace(channels=8, max_depth=2, in_channels=1, image_size=28)
    small = space.build(space.smallest(), num_classes=5).train()
    large = space.build(space.largest(), num_classes=5)
    peak_small = peak_activation_bytes(small, space.input_shape)
    # At least the input and the first layer's output and ReLU (4 channels at 28x28).
    assert peak_small >= FLOAT * 28 * 28 * (1 + 4)
    assert peak_activation_bytes(large, space.input_shape) > peak_small
    assert small.training and torch.is_grad_enabled()
    cost = space.cost(space.sample(random.Random(0)), num_classes=5)
    assert cost.peak_activation_bytes > 0
