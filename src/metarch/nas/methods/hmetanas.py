"""H-Meta-NAS: a weight-sharing supernet meta-trained with MAML, one sub-network per task.

After Zhao et al. (NeurIPS 2022), whose method section we do not have: what we build from
its abstract is a supernet whose sub-networks may be much smaller or larger (a global
width expansion and an adaptive number of layers, :mod:`~metarch.nas.spaces.elastic_conv`;
or the NAS-Bench-201 cells as a one-shot model, whose networks the real-device tables
measured: :mod:`~metarch.nas.spaces.nasbench201_supernet`),
meta-trained with MAML so that any sub-network adapts to a new task in a few steps, and
searched per device and budget afterwards (:mod:`metarch.nas.search`). The details below
are ours.

Meta-training: each meta-batch's tasks are split evenly among ``sandwich`` sub-networks
(the supernet's anchors, for the elastic space its largest and smallest, then random
ones: the sandwich rule of slimmable networks and once-for-all), drawn from ``seed`` and
the meta-iteration (so a resumed run draws the same ones). For each, the sub-network is cut
out of the supernet (its weights are slices of the supernet's), a MAML-family learner
computes its meta-gradient on its tasks (task-batched: the sub-network is an ordinary
network), and the gradient goes back onto the slices it came from, weighted by the share of
tasks. So the meta-gradient is exactly that of the supernet run as those sub-networks, and
the engine's task batching applies.

Adaptation (:meth:`HMetaNAS.adapt`): the sub-network of :attr:`HMetaNAS.architecture` (set by
a search for a device and budget; the largest by default) is cut out and adapted by MAML's
inner loop. Batch norm uses batch statistics throughout (MAML's transductive setting), which
are right for every sub-network; running statistics are shared between sub-networks of
different widths and are not used.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metarch.meta.base import (
    META_LEARNERS,
    ArchitecturePredictor,
    MetaLearner,
    MetaMetrics,
    TaskBatch,
)
from metarch.meta.maml import FOMAML, MAML
from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.base import SearchSpace
from metarch.nas.spaces.supernet import (
    SubnetLinear,
    WeightSharingSupernet,
    add_subnet_gradients,
    extract_subnet,
)
from metarch.registry import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["HMetaNAS", "select_tasks"]

InnerLearner = Literal["maml", "fomaml"]


def select_tasks(batch: TaskBatch, tasks: list[int]) -> TaskBatch:
    """The tasks ``tasks`` of a batch (a dataclass of tensors with a task dimension)."""
    if not dataclasses.is_dataclass(batch) or isinstance(batch, type):
        raise TypeError(f"cannot split a {type(batch).__name__} into tasks")
    index = torch.tensor(tasks, dtype=torch.long)
    fields = {
        field.name: getattr(batch, field.name)[index]
        for field in dataclasses.fields(batch)
        if isinstance(getattr(batch, field.name), Tensor)
    }
    selected: TaskBatch = dataclasses.replace(batch, **fields)
    return selected


@META_LEARNERS.register("hmetanas")
class HMetaNAS(MetaLearner):
    """MAML-trained weight-sharing supernet; a sub-network per task, device and budget.

    Args:
        model: A classifier whose backbone is a weight-sharing supernet
            (``elastic-conv-supernet``, ``nasbench201-supernet``).
        meta_learner: The meta-update: ``maml`` (second order) or ``fomaml``.
        inner_lr: Inner learning rate.
        steps: Inner steps in meta-training.
        eval_steps: Inner steps in :meth:`adapt` (default: ``steps``).
        sandwich: Sub-networks per meta-batch: the supernet's anchors first (the largest,
            then for the elastic space the smallest), random ones after.
        seed: Seed of the random sub-networks.
        batching: The MAML learner's task batching.
        task_threads: Task-batched: shards of tasks run by threads of their own.
        eval_architecture: The sub-network :meth:`adapt` uses (its canonical string;
            default: the largest). Searches set it per device and budget; evaluation takes
            it as a test-time setting (``--set method.options.eval_architecture=...``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        meta_learner: InnerLearner = "maml",
        inner_lr: PositiveFloat = 0.4,
        steps: NonNegativeInt = 1,
        eval_steps: NonNegativeInt | None = None,
        sandwich: PositiveInt = 4,
        seed: int = 0,
        batching: Literal["auto", "loop", "batched"] = "auto",
        task_threads: PositiveInt | None = 1,
        eval_architecture: str | None = None,
    ) -> None:
        super().__init__()
        supernets = [m for m in model.modules() if isinstance(m, WeightSharingSupernet)]
        head = getattr(model, "head", None)
        if len(supernets) != 1 or not isinstance(head, nn.Linear):
            raise ValueError(
                "hmetanas needs a classifier whose backbone is a weight-sharing supernet "
                "(model: elastic-conv-supernet or nasbench201-supernet)"
            )
        if not isinstance(head, SubnetLinear):
            # The head must follow the sub-network's width: same weights, sliced reads.
            subnet_head = SubnetLinear(head.in_features, head.out_features)
            subnet_head.load_state_dict(head.state_dict())
            model.head = subnet_head
        if meta_learner not in ("maml", "fomaml"):
            raise ValueError(f"meta_learner must be 'maml' or 'fomaml', got {meta_learner!r}")
        self.model = model
        self.meta_learner = meta_learner
        self.inner_lr = float(inner_lr)
        self.steps = steps
        self.eval_steps = steps if eval_steps is None else eval_steps
        self.sandwich = sandwich
        self.seed = seed
        self.batching = batching
        self.task_threads = task_threads
        self._supernet = (supernets[0],)  # part of the model already: not a second child
        self.architecture = (
            self.supernet.default_architecture()
            if eval_architecture is None
            else self.space.decode(eval_architecture)
        )
        # Meta-iterations done: draws the sub-networks; saved with the run.
        self.register_buffer("meta_iterations", torch.zeros((), dtype=torch.int64))
        self.meta_iterations: Tensor

    @property
    def supernet(self) -> WeightSharingSupernet:
        """The weight-sharing backbone."""
        return self._supernet[0]

    @property
    def space(self) -> SearchSpace[Any]:
        """The search space of the supernet's sub-networks."""
        return self.supernet.space

    def use_architecture(self, architecture: Any) -> None:
        """Adapt with this sub-network from now on (a search's choice)."""
        if isinstance(architecture, str):
            architecture = self.space.decode(architecture)
        self.architecture = architecture

    def subnets(self, iteration: int) -> list[Any]:
        """The sandwich of meta-iteration ``iteration``: the anchors, then random ones."""
        rng = random.Random(f"hmetanas:{self.seed}:{iteration}")
        chosen = self.supernet.anchors()[: self.sandwich]
        chosen += [self.space.sample(rng) for _ in range(self.sandwich - len(chosen))]
        return chosen

    def _learner(self, subnet: nn.Module, steps: int) -> MAML:
        learner_class = FOMAML if self.meta_learner == "fomaml" else MAML
        return learner_class(
            subnet,
            inner_lr=self.inner_lr,
            steps=steps,
            norm_policy="batch",
            batching=self.batching,
            task_threads=self.task_threads,
        )

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:
        """Split the tasks among the sandwich; each sub-network's gradients go back.

        Each is weighted by its share of the tasks.
        """
        tasks = batch.num_tasks
        subnets = self.subnets(int(self.meta_iterations))
        shares = [list(range(tasks))[i :: len(subnets)] for i in range(len(subnets))]
        loss = accuracy = 0.0
        for architecture, share in zip(subnets, shares, strict=True):
            if not share:
                continue
            weight = len(share) / tasks
            metrics = self.subnet_gradients(architecture, select_tasks(batch, share), weight)
            loss += weight * metrics.loss
            accuracy += weight * metrics.accuracy
        self.meta_iterations += 1
        return MetaMetrics(loss=loss, accuracy=accuracy, tasks=tasks)

    def subnet_gradients(self, architecture: Any, batch: TaskBatch, weight: float) -> MetaMetrics:
        """Add ``weight`` x the meta-gradient of one sub-network on its tasks to the supernet."""
        subnet = extract_subnet(self.model, architecture)
        metrics = self._learner(subnet, self.steps).compute_meta_gradients(batch)
        add_subnet_gradients(self.model, subnet, architecture, weight)
        return metrics

    def adapt(self, support_x: Tensor, support_y: Tensor) -> ArchitecturePredictor:
        """Cut out :attr:`architecture`'s sub-network and adapt it to the support set."""
        subnet = extract_subnet(self.model, self.architecture)
        subnet.train(self.training)
        predictor = self._learner(subnet, self.eval_steps).adapt(support_x, support_y)
        return ArchitecturePredictor(predictor, self.space.encode(self.architecture))

    def adapted_subnet(
        self, support_x: Tensor, support_y: Tensor, architecture: Any | None = None
    ) -> nn.Module:
        """The sub-network adapted to a support set, as a stand-alone module to deploy.

        Its weights are the adapted ones; its batch norms' running statistics are the
        support set's own under them, so in eval mode it classifies each image alone (not
        transductively), as an exported model must.
        """
        architecture = architecture or self.architecture
        subnet = extract_subnet(self.model, architecture)
        subnet.train(self.training)
        adaptation = self._learner(subnet, self.eval_steps).adapt_parameters(support_x, support_y)
        with torch.no_grad():
            for name, parameter in subnet.named_parameters():
                parameter.copy_(adaptation.params[name])
            norms = [m for m in subnet.modules() if isinstance(m, MetaBatchNorm2d)]
            momenta = [norm.momentum for norm in norms]
            for norm in norms:
                norm.momentum = 1.0  # running statistics := this batch's
            subnet.train()
            subnet(support_x)
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
        return subnet.eval()
