"""The continuous relaxation of MetaNAS's cell space: one network holding every genotype.

Every edge of a cell is a mixed operation: the sum of all 7 few-shot operations weighted
by ``softmax(alpha / T)``; every node weights each pair of its inputs by
``softmax(beta / T)`` and sums, over pairs, the pair's two edge outputs (MetaNAS's
pairwise input weights: a node learns which 2 inputs to keep). ``alpha`` and ``beta``
are the network's architecture parameters (group ``architecture``), one set for normal
and one for reduction cells, shared by all cells of a kind. ``T`` is the forward
context's temperature (:mod:`metarch.models.context`), so an inner loop can anneal it
step by step. An operation or pair whose weight is at most ``skip_below`` is not run: it
contributes nothing (MetaNAS's threshold; 0 runs everything). :meth:`~MetaNASSearchNetwork.prune`
removes weak operations from the meta-architecture for good: a pruned operation's weight is
exactly 0 (its logit is masked to ``-inf``, so no gradient reaches it either). Drop-path
(MetaNAS: 0.2 in meta-training) zeroes each operation's output for random samples in the
support passes of training mode.

The forward is written once against an *executor* (how to read a parameter, run a child
module, weight an output, concatenate): plainly for one task, and on the task-grouped
layout of the task-batched engine, where every task has its own architecture weights and
an operation is skipped for exactly the tasks whose weight is below the threshold. Both
give the same result (tested at second order).

:meth:`MetaNASSearchNetwork.genotype` discretises, as MetaNAS does: per node the pair with
the largest ``beta``, on each of its two edges the operation with the largest ``alpha``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metarch.meta.batched import BatchedNormContext, Params, register_batched_module
from metarch.models.context import current_context
from metarch.models.groups import ARCHITECTURE, WEIGHTS
from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.ops import FEW_SHOT_OPERATIONS, create_operation
from metarch.nas.spaces.base import SearchSpace
from metarch.nas.spaces.metanas import (
    CELL_TYPES,
    NODES,
    CellGenotype,
    Genotype,
    MetaNASSpace,
    NodeGenotype,
    cell_inputs,
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

__all__ = ["MetaNASSearchNetwork", "input_pairs"]


def input_pairs(node: int) -> list[tuple[int, int]]:
    """The pairs of inputs node ``node`` can take, in ``beta``'s order: (0, 1), (0, 2), ..."""
    return list(itertools.combinations(range(node + 2), 2))


class SearchCell(nn.Module):
    """A cell of the relaxation: every edge holds all operations (weights come from outside)."""

    def __init__(
        self,
        channels: int,
        previous_previous: int,
        previous: int,
        *,
        reduction: bool,
        reduction_before: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = cell_inputs(
            channels, previous_previous, previous, reduction_before=reduction_before, affine=False
        )
        # edges[node][input][operation]
        self.edges = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(
                    create_operation(op, channels, 2 if reduction and source < 2 else 1, False)
                    for op in FEW_SHOT_OPERATIONS
                )
                for source in range(node + 2)
            )
            for node in range(NODES)
        )


class MetaNASSearchNetwork(nn.Module):
    """The relaxed network: a stem, search cells, pooled features (``NODES * C``).

    Args:
        channels: ``C`` per node (MetaNAS: 28).
        cells: Number of cells (MetaNAS: 4).
        reductions: Indices of the reduction cells (MetaNAS: 1 and 3).
        in_channels: Image channels.
        stem_multiplier: The stem outputs ``stem_multiplier * C`` channels.
        skip_below: Operations and input pairs whose weight is at most this are not run
            (MetaNAS: 0.01 in meta-training, 0.05 in meta-testing).
        init_scale: Architecture parameters start as ``init_scale * N(0, 1)``.
        drop_path: Probability that an operation's output is zeroed for a sample in a
            support pass of training mode (MetaNAS: 0.2 in meta-training; identities are
            never dropped). Outputs kept are scaled by ``1 / (1 - drop_path)``.
        genotype: Restrict the relaxation to this genotype (canonical string): on every
            node only its input pair, on each of the pair's edges only its operation, so
            the network computes exactly that genotype's discrete network (and runs only
            its operations). The fixed-architecture ablation of MetaNAS, trained and
            evaluated by the same learner; ``None``: the whole space.
    """

    def __init__(
        self,
        *,
        channels: int = 28,
        cells: int = 4,
        reductions: tuple[int, ...] = (1, 3),
        in_channels: int = 1,
        stem_multiplier: int = 3,
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
        self.in_channels = in_channels
        stem = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), MetaBatchNorm2d(stem)
        )
        self.cells = nn.ModuleList()
        previous_previous, previous = stem, stem
        reduction_before = False
        for index in range(cells):
            reduction = index in reductions
            self.cells.append(
                SearchCell(
                    channels,
                    previous_previous,
                    previous,
                    reduction=reduction,
                    reduction_before=reduction_before,
                )
            )
            previous_previous, previous = previous, NODES * channels
            reduction_before = reduction
        self.out_features = previous
        self.num_cells = cells
        operations = len(FEW_SHOT_OPERATIONS)
        for kind in CELL_TYPES:
            self.register_module(
                f"alpha_{kind}",
                nn.ParameterList(
                    nn.Parameter(init_scale * torch.randn(node + 2, operations))
                    for node in range(NODES)
                ),
            )
            self.register_module(
                f"beta_{kind}",
                nn.ParameterList(
                    nn.Parameter(init_scale * torch.randn(len(input_pairs(node))))
                    for node in range(NODES)
                ),
            )
            for node in range(NODES):
                # Operations still in the meta-architecture (see prune()).
                self.register_buffer(
                    _kept_name(kind, node), torch.ones(node + 2, operations, dtype=torch.bool)
                )
                # Input pairs a node may use (all but one only for a fixed genotype).
                self.register_buffer(
                    _kept_pairs_name(kind, node),
                    torch.ones(len(input_pairs(node)), dtype=torch.bool),
                )
        if genotype is not None:
            self.restrict_to(self.search_space().decode(genotype))

    @torch.no_grad()
    def restrict_to(self, genotype: Genotype) -> None:
        """Keep only ``genotype``'s input pairs and operations (see ``genotype`` above)."""
        for kind in CELL_TYPES:
            for node, ((first, a), (second, b)) in enumerate(getattr(genotype, kind)):
                pairs: Tensor = getattr(self, _kept_pairs_name(kind, node))
                pairs.fill_(False)
                pairs[input_pairs(node).index((min(a, b), max(a, b)))] = True
                kept: Tensor = getattr(self, _kept_name(kind, node))
                for operation, source in ((first, a), (second, b)):
                    kept[source].fill_(False)
                    kept[source, FEW_SHOT_OPERATIONS.index(operation)] = True

    def optional_state(self) -> list[str]:
        """Buffers runs saved before input pairs could be restricted lack (every pair kept)."""
        return [_kept_pairs_name(kind, node) for kind in CELL_TYPES for node in range(NODES)]

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.optional_state():
            if prefix + name not in state_dict:
                state_dict[prefix + name] = torch.ones_like(self.get_buffer(name))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def parameter_group(self, name: str) -> str:
        """``architecture`` for the operation and input weights, ``weights`` otherwise."""
        return ARCHITECTURE if name.startswith(("alpha_", "beta_")) else WEIGHTS

    def search_space(self, input_shape: tuple[int, int, int] | None = None) -> SearchSpace[Any]:
        """The discrete space this network relaxes, for images of ``input_shape``."""
        return MetaNASSpace(
            channels=self.channels,
            cells=self.num_cells,
            in_channels=self.in_channels,
            **({} if input_shape is None else {"image_size": input_shape[1]}),
        )

    def _logits(self, kind: str, node: int, alpha: Tensor) -> Tensor:
        """Operation logits with pruned operations at ``-inf`` (weight exactly 0)."""
        return masked_logits(alpha, getattr(self, _kept_name(kind, node)))

    def _pair_logits(self, kind: str, node: int, beta: Tensor) -> Tensor:
        """Input-pair logits with pairs outside a fixed genotype at ``-inf``."""
        return masked_logits(beta, getattr(self, _kept_pairs_name(kind, node)))

    @torch.no_grad()
    def prune(self, threshold: float, temperature: float = 1.0) -> int:
        """Remove operations whose weight ``softmax(alpha / temperature)`` is below ``threshold``.

        MetaNAS prunes the meta-architecture every few thousand meta-iterations at the final
        temperature of the inner loop, with threshold 0.01. The strongest operation of each
        edge always stays (a weight below ``1 / 7`` cannot be the largest), so every edge
        keeps a valid distribution.

        Returns:
            The number of operations removed now.
        """
        return sum(
            prune_weak(
                self.get_parameter(f"alpha_{kind}.{node}"),
                getattr(self, _kept_name(kind, node)),
                threshold,
                temperature,
            )
            for kind in CELL_TYPES
            for node in range(NODES)
        )

    def kept_operations(self) -> int:
        """Operations still in the meta-architecture (all edges of both cell types)."""
        return sum(
            int(getattr(self, _kept_name(kind, node)).sum())
            for kind in CELL_TYPES
            for node in range(NODES)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, NODES * C)`` of images ``(N, C_in, H, W)``."""
        return self.compute(x, OneTask(self))

    def compute(self, x: Tensor, executor: Executor) -> Tensor:
        """The forward, run by ``executor`` (one task, or task-grouped)."""
        context = current_context()
        temperature = context.current_temperature
        dropping = self.drop_path if self.training and context.phase == "support" else 0.0
        weights = {
            kind: [
                (
                    torch.softmax(
                        self._logits(kind, node, executor.parameter(f"alpha_{kind}.{node}"))
                        / temperature,
                        -1,
                    ),
                    torch.softmax(
                        self._pair_logits(kind, node, executor.parameter(f"beta_{kind}.{node}"))
                        / temperature,
                        -1,
                    ),
                )
                for node in range(NODES)
            ]
            for kind in CELL_TYPES
        }
        s0 = s1 = executor.run("stem", x)
        for index, cell in enumerate(self.cells):
            assert isinstance(cell, SearchCell)
            kind = "reduce" if cell.reduction else "normal"
            out = self._cell(f"cells.{index}", cell, s0, s1, weights[kind], executor, dropping)
            s0, s1 = s1, out
        pooled = s1.mean(dim=(2, 3))
        return pooled

    def _cell(
        self,
        name: str,
        cell: SearchCell,
        s0: Tensor,
        s1: Tensor,
        weights: list[tuple[Tensor, Tensor]],
        executor: Executor,
        dropping: float,
    ) -> Tensor:
        states = [executor.run(f"{name}.preprocess0", s0), executor.run(f"{name}.preprocess1", s1)]
        # Nodes of a reduction cell are at the reduced size (3x3 windows, stride 2, pad 1).
        n, c, h, w = states[1].shape
        size = (n, c, (h + 1) // 2, (w + 1) // 2) if cell.reduction else (n, c, h, w)

        def nothing() -> Tensor:
            return states[1].new_zeros(size)

        for node, (alpha, beta) in enumerate(weights):
            pairs = [(pair, self._kept(beta[..., pair])) for pair in range(len(input_pairs(node)))]
            pairs = [(pair, w) for pair, w in pairs if executor.needed(w, self.skip_below)]
            # Each input's mixed operation runs once, however many kept pairs use it.
            sources = sorted({s for pair, _ in pairs for s in input_pairs(node)[pair]})
            edges = {
                source: self._mixed(
                    f"{name}.edges.{node}.{source}",
                    alpha[..., source, :],
                    states[source],
                    executor,
                    nothing,
                    dropping,
                )
                for source in sources
            }
            node_total: Tensor | None = None
            for pair, weight in pairs:
                a, b = input_pairs(node)[pair]
                term = executor.weighted(edges[a] + edges[b], weight)
                node_total = term if node_total is None else node_total + term
            states.append(node_total if node_total is not None else nothing())
        return executor.concat(states[2:])

    def _mixed(
        self,
        name: str,
        alpha: Tensor,
        x: Tensor,
        executor: Executor,
        nothing: Callable[[], Tensor],
        dropping: float,
    ) -> Tensor:
        """One edge's mixed operation: its operations' outputs weighted by ``alpha``."""
        total: Tensor | None = None
        for op in range(len(FEW_SHOT_OPERATIONS)):
            weight = self._kept(alpha[..., op])
            if not executor.needed(weight, self.skip_below):
                continue
            out = executor.run(f"{name}.{op}", x)
            if dropping and not isinstance(self.get_submodule(f"{name}.{op}"), nn.Identity):
                out = executor.drop_path(out, dropping)
            out = executor.weighted(out, weight)
            total = out if total is None else total + out
        return total if total is not None else nothing()

    def _kept(self, weight: Tensor) -> Tensor:
        return zero_below(weight, self.skip_below)

    @torch.no_grad()
    def genotype(self, architecture: Mapping[str, Tensor] | None = None) -> Genotype:
        """The discrete architecture the architecture parameters choose.

        Per node the input pair with the largest ``beta`` and, on each of its two edges, the
        (unpruned) operation with the largest ``alpha`` (as MetaNAS derives it).

        Args:
            architecture: Architecture parameters by their names in this module
                (``alpha_normal.0``, ...), e.g. a task's adapted ones; default: its own.
        """
        own = OneTask(self)

        def read(name: str) -> Tensor:
            return architecture[name] if architecture is not None else own.parameter(name)

        cells: dict[str, CellGenotype] = {}
        for kind in CELL_TYPES:
            nodes: list[NodeGenotype] = []
            for node in range(NODES):
                alpha = self._logits(kind, node, read(f"alpha_{kind}.{node}"))
                beta = self._pair_logits(kind, node, read(f"beta_{kind}.{node}"))
                a, b = input_pairs(node)[int(beta.argmax())]
                first = (FEW_SHOT_OPERATIONS[int(alpha[a].argmax())], a)
                second = (FEW_SHOT_OPERATIONS[int(alpha[b].argmax())], b)
                nodes.append((first, second))
            cells[kind] = tuple(nodes)
        return Genotype(cells["normal"], cells["reduce"])


def _kept_name(kind: str, node: int) -> str:
    return f"kept_{kind}_{node}"


def _kept_pairs_name(kind: str, node: int) -> str:
    return f"kept_pairs_{kind}_{node}"


def _run_search_network(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, MetaNASSearchNetwork)
    return module.compute(x, TaskGrouped(name, params, context))


register_batched_module(MetaNASSearchNetwork, run=_run_search_network)
