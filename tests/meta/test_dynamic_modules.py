"""Modules the task-batched engine cannot trace once for all, taught to it by a rule.

A mixed operation (a per-task weighted sum of candidate operations, weights from
architecture parameters and the forward context's temperature) and an elastic-depth
stage (the forward context's sub-network says how many blocks run) each get a rule with
:func:`register_batched_module`; the rules run the modules' children through the engine.
Both must equal the loop at second order, with architecture and weights adapted by
different inner optimizers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from metarch.meta import MAML
from metarch.meta.batched import (
    BatchedNormContext,
    Params,
    register_batched_module,
    scale_per_task,
)
from metarch.models.context import current_context, forward_context
from metarch.models.groups import ARCHITECTURE, WEIGHTS
from metarch.models.norm import MetaBatchNorm2d
from tests.meta.helpers import flat_grad, make_batch


class ToyMixedOp(nn.Module):
    """``sum_i softmax(alpha / temperature)_i * op_i(x)`` over three candidate operations."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=1),
                    MetaBatchNorm2d(channels),
                    nn.ReLU(),
                ),
                nn.Conv2d(channels, channels, 1),
                nn.AvgPool2d(3, stride=1, padding=1),
            ]
        )
        self.alpha = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    @staticmethod
    def weights(alpha: Tensor) -> Tensor:
        return torch.softmax(alpha / current_context().temperature, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.weights(self.alpha)
        return sum((weights[i] * op(x) for i, op in enumerate(self.ops)), torch.zeros_like(x))


def run_mixed(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, ToyMixedOp) and context.engine is not None
    weights = module.weights(params[f"{name}.alpha"])  # (T, 3): one row per task
    out = torch.zeros_like(x)
    for i in range(len(module.ops)):
        child = context.engine.run_module(f"{name}.ops.{i}", x, params, context)
        out = out + scale_per_task(child, weights[:, i])
    return out


class ElasticDepth(nn.Module):
    """Blocks of which the forward context's sub-network runs the first ``depth``."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
            for _ in range(blocks)
        )

    @staticmethod
    def depth(default: int) -> int:
        subnet: Any = current_context().subnet
        return int(subnet["depth"]) if subnet is not None else default

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks[: self.depth(len(self.blocks))]:
            x = x + block(x)
        return x


def run_elastic(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, ElasticDepth) and context.engine is not None
    for i in range(module.depth(len(module.blocks))):
        x = x + context.engine.run_module(f"{name}.blocks.{i}", x, params, context)
    return x


register_batched_module(ToyMixedOp, run=run_mixed)
register_batched_module(ElasticDepth, run=run_elastic)


class SearchableNet(nn.Module):
    """Stem, a mixed operation, an elastic stage, a head; ``alpha`` is architecture."""

    def __init__(self, ways: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2), MetaBatchNorm2d(channels))
        self.mixed = ToyMixedOp(channels)
        self.stage = ElasticDepth(channels, blocks=3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, ways)

    def parameter_group(self, name: str) -> str:
        return ARCHITECTURE if name.endswith("alpha") else WEIGHTS

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage(self.mixed(self.stem(x)))
        logits: Tensor = self.head(self.flatten(self.pool(x)))
        return logits


def meta_gradient(batching: str, depth: int, temperature: float) -> Tensor:
    torch.manual_seed(0)
    model = SearchableNet().double()
    learner = MAML(
        model,
        inner_lr=0.2,
        steps=2,
        batching=batching,  # type: ignore[arg-type]
        inner_optimizer={"weights": "sgd", "architecture": {"name": "adam", "lr": 0.05}},
        task_threads=1,
    )
    with forward_context(temperature=temperature, subnet={"depth": depth}):
        learner.compute_meta_gradients(make_batch(tasks=3))
    assert learner.batching == batching  # no silent fallback to the loop
    return flat_grad(list(model.parameters()))


@pytest.mark.parametrize(("depth", "temperature"), [(3, 1.0), (1, 0.5), (0, 2.0)])
def test_mixed_op_and_elastic_depth_batched_equal_the_loop_at_second_order(
    depth: int, temperature: float
) -> None:
    loop = meta_gradient("loop", depth, temperature)
    batched = meta_gradient("batched", depth, temperature)
    torch.testing.assert_close(batched, loop, rtol=1e-9, atol=1e-11)
    # Skipped blocks get a zero meta-gradient; the architecture weights a non-zero one.
    model = SearchableNet()
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = slice(start, start + p.numel())
        start += p.numel()
    for block in range(3):
        grad = loop[offsets[f"stage.blocks.{block}.0.weight"]]
        assert bool(grad.abs().sum() > 0) == (block < depth)
    assert loop[offsets["mixed.alpha"]].abs().sum() > 0


def test_the_temperature_and_the_sub_network_change_the_meta_gradient() -> None:
    base = meta_gradient("batched", 2, 1.0)
    assert not torch.allclose(base, meta_gradient("batched", 2, 0.3))
    assert not torch.allclose(base, meta_gradient("batched", 3, 1.0))
