"""The continuous relaxation of the NAS-Bench-201 cell space (DARTS on its 6 edges).

Every edge of a cell is a mixed operation: the 5 operations weighted by
``softmax(alpha / T)``, one ``alpha`` of shape ``(6, 5)`` (edges in
:data:`~metarch.nas.spaces.nasbench201.EDGES` order, operations in
:data:`~metarch.nas.spaces.nasbench201.OPERATIONS` order) shared by all cells, as in the
benchmark's own DARTS baselines. ``T`` is the forward context's temperature, so MetaNAS can
anneal it per inner step. The macro network is the benchmark's (stem, three stages of ``N``
cells joined by residual reductions), so a derived cell is looked up as it is in the
benchmark's tables, e.g. the real-device latencies of ``../shared/data/hardware/``.

As in MetaNAS's relaxation (:mod:`metarch.nas.spaces.metanas_search`): an operation whose
weight is at most ``skip_below`` is not run; :meth:`~NASBench201SearchNetwork.prune`
removes weak operations for good (logits masked to ``-inf``); drop-path zeroes operation
outputs for random samples in support passes of training; ``genotype=`` restricts the
relaxation to one architecture (the fixed-architecture ablation). ``none`` contributes
nothing whatever its weight, so it never runs; its weight only takes mass from the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metarch.meta.batched import BatchedNormContext, Params, register_batched_module
from metarch.models.context import current_context
from metarch.models.groups import ARCHITECTURE, WEIGHTS
from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.base import SearchSpace
from metarch.nas.spaces.nasbench201 import (
    EDGES,
    OPERATIONS,
    Architecture201,
    NASBench201Space,
    create_operation201,
    macro_body,
    macro_stem,
)
from metarch.nas.spaces.relaxation import (
    Executor,
    OneTask,
    TaskGrouped,
    check_rates,
    masked_logits,
    prune_weak,
    zero_below,
)

__all__ = ["NASBench201SearchNetwork", "SearchCell201"]

_NONE = OPERATIONS.index("none")


class SearchCell201(nn.Module):
    """A cell of the relaxation: every edge holds all 5 operations (weights from outside)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # edges[edge][operation], edges in EDGES order
        self.edges = nn.ModuleList(
            nn.ModuleList(create_operation201(op, channels) for op in OPERATIONS) for _ in EDGES
        )


class NASBench201SearchNetwork(nn.Module):
    """The relaxed NAS-Bench-201 macro network: images to ``4C`` features.

    Args:
        channels: ``C``, the first stage's width (the benchmark: 16).
        cells_per_stage: ``N`` (the benchmark: 5).
        in_channels: Image channels.
        skip_below: Operations whose weight is at most this are not run.
        init_scale: ``alpha`` starts as ``init_scale * N(0, 1)``.
        drop_path: Probability that an operation's output is zeroed for a sample in a
            support pass of training mode (identities are never dropped).
        genotype: Restrict the relaxation to this architecture (canonical string): every
            edge keeps only its operation, so the network computes exactly the
            architecture's discrete network; ``None``: the whole space.
    """

    def __init__(
        self,
        *,
        channels: int = 16,
        cells_per_stage: int = 5,
        in_channels: int = 3,
        skip_below: float = 0.0,
        init_scale: float = 1e-3,
        drop_path: float = 0.0,
        genotype: str | None = None,
    ) -> None:
        super().__init__()
        check_rates(skip_below, drop_path)
        self.skip_below = skip_below
        self.drop_path = drop_path
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.in_channels = in_channels
        self.stem = macro_stem(in_channels, channels)
        layers, width = macro_body(channels, cells_per_stage, SearchCell201)
        self.cells = nn.ModuleList(layers)
        self.last = nn.Sequential(MetaBatchNorm2d(width), nn.ReLU())
        self.out_features = width
        self.alpha = nn.Parameter(init_scale * torch.randn(len(EDGES), len(OPERATIONS)))
        # Operations still in the meta-architecture (see prune()).
        self.register_buffer("kept", torch.ones(len(EDGES), len(OPERATIONS), dtype=torch.bool))
        if genotype is not None:
            self.restrict_to(self.search_space().decode(genotype))

    def parameter_group(self, name: str) -> str:
        """``architecture`` for ``alpha``, ``weights`` otherwise."""
        return ARCHITECTURE if name == "alpha" else WEIGHTS

    def search_space(self, input_shape: tuple[int, int, int] | None = None) -> SearchSpace[Any]:
        """The discrete space this network relaxes, for images of ``input_shape``."""
        return NASBench201Space(
            channels=self.channels,
            cells_per_stage=self.cells_per_stage,
            in_channels=self.in_channels,
            **({} if input_shape is None else {"image_size": input_shape[1]}),
        )

    @torch.no_grad()
    def restrict_to(self, architecture: Architecture201) -> None:
        """Keep only ``architecture``'s operation on every edge."""
        kept: Tensor = self.get_buffer("kept")
        kept.fill_(False)
        for edge, operation in enumerate(architecture):
            kept[edge, OPERATIONS.index(operation)] = True

    def _logits(self, alpha: Tensor) -> Tensor:
        """Operation logits with pruned operations at ``-inf`` (weight exactly 0)."""
        return masked_logits(alpha, self.get_buffer("kept"))

    @torch.no_grad()
    def prune(self, threshold: float, temperature: float = 1.0) -> int:
        """Remove operations whose weight at ``temperature`` is below ``threshold``.

        The strongest operation of each edge always stays. Returns how many were removed.
        """
        return prune_weak(self.alpha, self.get_buffer("kept"), threshold, temperature)

    def kept_operations(self) -> int:
        """Operations still in the meta-architecture (over all 6 edges)."""
        return int(self.get_buffer("kept").sum())

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 4C)`` of images ``(N, C_in, H, W)``."""
        return self.compute(x, OneTask(self))

    def compute(self, x: Tensor, executor: Executor) -> Tensor:
        """The forward, run by ``executor`` (one task, or task-grouped)."""
        context = current_context()
        dropping = self.drop_path if self.training and context.phase == "support" else 0.0
        logits = self._logits(executor.parameter("alpha"))
        weights = torch.softmax(logits / context.current_temperature, -1)
        h = executor.run("stem", x)
        for index, layer in enumerate(self.cells):
            name = f"cells.{index}"
            if isinstance(layer, SearchCell201):
                h = self._cell(name, h, weights, executor, dropping)
            else:
                h = executor.run(name, h)
        pooled: Tensor = executor.run("last", h).mean(dim=(2, 3))
        return pooled

    def _cell(
        self, name: str, x: Tensor, weights: Tensor, executor: Executor, dropping: float
    ) -> Tensor:
        nodes = [x]
        for target in (1, 2, 3):
            total: Tensor | None = None
            for edge, (to, source) in enumerate(EDGES):
                if to != target:
                    continue
                for op, module in enumerate(self._edge(name, edge)):
                    weight = self._kept(weights[..., edge, op])
                    if op == _NONE or not executor.needed(weight, self.skip_below):
                        continue
                    out = executor.run(f"{name}.edges.{edge}.{op}", nodes[source])
                    if dropping and not isinstance(module, nn.Identity):
                        out = executor.drop_path(out, dropping)
                    out = executor.weighted(out, weight)
                    total = out if total is None else total + out
            nodes.append(total if total is not None else torch.zeros_like(x))
        return nodes[3]

    def _edge(self, cell: str, edge: int) -> nn.ModuleList:
        operations = self.get_submodule(f"{cell}.edges.{edge}")
        assert isinstance(operations, nn.ModuleList)
        return operations

    def _kept(self, weight: Tensor) -> Tensor:
        return zero_below(weight, self.skip_below)

    @torch.no_grad()
    def genotype(self, architecture: Mapping[str, Tensor] | None = None) -> Architecture201:
        """The architecture ``alpha`` chooses: the (unpruned) strongest operation per edge.

        Args:
            architecture: ``{"alpha": tensor}``, e.g. a task's adapted one; default: its own.
        """
        alpha = architecture["alpha"] if architecture is not None else self.alpha
        choice = self._logits(alpha).argmax(-1).tolist()
        return tuple(OPERATIONS[op] for op in choice)


def _run_search_network(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, NASBench201SearchNetwork)
    return module.compute(x, TaskGrouped(name, params, context))


register_batched_module(NASBench201SearchNetwork, run=_run_search_network)
