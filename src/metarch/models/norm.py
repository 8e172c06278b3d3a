"""Batch normalisation whose statistics policy is explicit, for inner loops.

Stock ``nn.BatchNorm2d`` updates its running statistics in place. Inside a functional
inner loop that is a side effect on shared buffers; under ``vmap`` over tasks it is an
error or, worse, silently wrong. :class:`MetaBatchNorm2d` never updates anything in place
while a :func:`batch_norm_context` is active: it normalises with the statistics the context
asks for and *records* the batch statistics it computed, so the meta-learner can return
them from a vmapped function and fold them into the running buffers afterwards.

Three policies (see :class:`NormPolicy`), and their effect on evaluation:

* ``batch`` — batch statistics everywhere, as in MAML. Evaluation is *transductive*: a
  query's prediction depends on the other queries normalised with it.
* ``per_step`` — MAML++ (BNRS + BNWB): a separate affine pair and separate running
  statistics for every inner step (and the query pass after the last step). Training
  normalises with batch statistics and records them per step; evaluation uses the running
  statistics of each step, so it is *not* transductive.
* ``frozen`` — running statistics in the inner loop and at evaluation; only the
  meta-training query pass normalises with batch statistics (and updates the running
  ones). Adaptation and evaluation never look at batch statistics: *not* transductive.
* ``task`` — a module trained on the task (Reptile's fine-tuned copy): the inner loop
  normalises with batch statistics and, at evaluation, folds them into running statistics
  of the task's own, which the queries then use: *not* transductive. The meta-model's
  running statistics are only where every task's start from.

Without a context the layer behaves exactly like ``nn.BatchNorm2d`` (used by prototypical
networks and plain training).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.models.context import Phase, current_context, forward_context

__all__ = [
    "BatchNormContext",
    "MetaBatchNorm2d",
    "NormPolicy",
    "RecordedStatistics",
    "apply_recorded_statistics",
    "batch_norm_context",
    "name_norm_layers",
    "with_plain_batch_norms",
]


class NormPolicy(str, enum.Enum):
    """How batch normalisation picks its statistics inside meta-learning."""

    BATCH = "batch"
    PER_STEP = "per_step"
    FROZEN = "frozen"
    TASK = "task"

    def uses_running_statistics(self, *, inner: bool, training: bool) -> bool:
        """Whether to normalise with running (instead of batch) statistics.

        Args:
            inner: True for a pass of the inner loop (adaptation), False for the query pass.
            training: True during meta-training, False during evaluation.
        """
        if self is NormPolicy.BATCH:
            return False
        if self is NormPolicy.PER_STEP:
            return not training
        if self is NormPolicy.TASK:
            return not inner and not training
        return inner or not training


@dataclass
class RecordedStatistics:
    """Batch statistics computed by the layers during one forward pass."""

    means: dict[str, Tensor] = field(default_factory=dict)
    variances: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchNormContext:
    """What :class:`MetaBatchNorm2d` layers do during one functional forward pass.

    Attributes:
        step: Inner step index (the query pass after ``S`` steps is step ``S``).
        use_running: Normalise with the running statistics of ``step``.
        record: Where to record batch statistics (``None``: do not record).
        fused: Use PyTorch's fused batch-norm kernel for batch statistics. Faster (one
            kernel instead of a dozen element-wise ops, in every derivative), and exact to
            any order in plain autograd, but its double backward is wrong under ``vmap``:
            only set it outside vmap.
        update_running: Normalise with batch statistics and fold them into the running
            statistics the layer is given, in place, as ``nn.BatchNorm2d`` does in train
            mode: for a task's own copy of them (``NormPolicy.TASK``), never under vmap.
    """

    step: int = 0
    use_running: bool = False
    record: RecordedStatistics | None = None
    fused: bool = False
    update_running: bool = False


@contextlib.contextmanager
def batch_norm_context(
    context: BatchNormContext, phase: Phase | None = None
) -> Iterator[BatchNormContext]:
    """Make :class:`MetaBatchNorm2d` layers follow ``context`` in the enclosed block.

    Sets the forward context's ``norm`` and ``step`` (and ``phase`` if given); its other
    fields (temperature, sub-network) are inherited from the enclosing block.
    """
    changes: dict[str, object] = {"norm": context, "step": context.step}
    if phase is not None:
        changes["phase"] = phase
    with forward_context(**changes):
        yield context


class MetaBatchNorm2d(nn.Module):
    """Batch normalisation for functional inner loops (see the module docstring).

    Args:
        channels: Number of channels.
        steps: Inner steps; with ``per_step`` the layer keeps ``steps + 1`` slots.
        per_step: Keep per-step affine parameters and running statistics (MAML++).
        momentum: Running-statistics momentum, as in ``nn.BatchNorm2d``.
        eps: Added to the variance.
    """

    def __init__(
        self,
        channels: int,
        *,
        steps: int = 1,
        per_step: bool = False,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.slots = steps + 1 if per_step else 1
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.slots, channels))
        self.bias = nn.Parameter(torch.zeros(self.slots, channels))
        self.register_buffer("running_mean", torch.zeros(self.slots, channels))
        self.register_buffer("running_var", torch.ones(self.slots, channels))
        self.running_mean: Tensor
        self.running_var: Tensor
        #: Set by the owning model so recorded statistics carry the module's name.
        self.qualified_name = ""

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.channels}, slots={self.slots}, momentum={self.momentum}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape ``(N, C, H, W)``.

        ``x`` may have fewer channels than the layer (a narrower sub-network of an
        elastic supernet): its ``C`` channels use the layer's first ``C`` affine parameters
        and running statistics.
        """
        context = current_context().norm
        width = x.shape[1]
        if width > self.channels:
            raise ValueError(f"{width} channels into a batch norm of {self.channels}")
        if context is None:
            # Plain-module semantics: identical to nn.BatchNorm2d on slot 0.
            return F.batch_norm(
                x,
                self.running_mean[0, :width],
                self.running_var[0, :width],
                self.weight[0, :width],
                self.bias[0, :width],
                self.training,
                self.momentum,
                self.eps,
            )
        slot = min(context.step, self.slots - 1)
        weight, bias = self.weight[slot, :width], self.bias[slot, :width]
        if context.use_running:
            mean, var = self.running_mean[slot, :width], self.running_var[slot, :width]
        elif context.update_running:
            return F.batch_norm(
                x,
                self.running_mean[slot, :width],
                self.running_var[slot, :width],
                weight,
                bias,
                True,
                self.momentum,
                self.eps,
            )
        elif context.fused and x.shape[0] * x.shape[2] * x.shape[3] > 1:
            if context.record is not None:
                with torch.no_grad():
                    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
                key = f"{self.qualified_name}@{slot}"
                context.record.means[key] = mean
                context.record.variances[key] = var
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        else:
            # Explicit reductions: differentiable to any order, also under vmap.
            mean = x.mean(dim=(0, 2, 3))
            var = (x - mean[None, :, None, None]).square().mean(dim=(0, 2, 3))
            if context.record is not None:
                key = f"{self.qualified_name}@{slot}"
                count = x.shape[0] * x.shape[2] * x.shape[3]
                context.record.means[key] = mean.detach()
                # Running variance is unbiased, as in nn.BatchNorm2d.
                context.record.variances[key] = var.detach() * (count / max(count - 1, 1))
        scale = weight * torch.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    @torch.no_grad()
    def to_batch_norm(self) -> nn.BatchNorm2d:
        """The ``nn.BatchNorm2d`` this layer equals outside of a context (slot 0)."""
        plain = nn.BatchNorm2d(self.channels, eps=self.eps, momentum=self.momentum)
        plain.weight.copy_(self.weight[0])
        plain.bias.copy_(self.bias[0])
        plain.running_mean.copy_(self.running_mean[0])  # type: ignore[union-attr]
        plain.running_var.copy_(self.running_var[0])  # type: ignore[union-attr]
        plain.train(self.training)
        return plain.to(self.weight.device)

    @torch.no_grad()
    def update_running_statistics(self, slot: int, mean: Tensor, var: Tensor) -> None:
        """Fold batch statistics (averaged over tasks) into the running buffers of ``slot``.

        Statistics of ``C`` channels (a narrower sub-network) update the first ``C``.
        """
        width = mean.shape[-1]
        self.running_mean[slot, :width].lerp_(mean, self.momentum)
        self.running_var[slot, :width].lerp_(var, self.momentum)


def name_norm_layers(model: nn.Module) -> None:
    """Tell every :class:`MetaBatchNorm2d` of ``model`` its qualified name (for recording)."""
    for name, module in model.named_modules():
        if isinstance(module, MetaBatchNorm2d):
            module.qualified_name = name


def with_plain_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model``, its :class:`MetaBatchNorm2d` layers as plain ``nn.BatchNorm2d``.

    Each is the ``nn.BatchNorm2d`` it equals outside of a context (slot 0). For exporters:
    the layer slices its statistics by the input's width, which a tracer records as shape
    arithmetic that cannot be folded (35 ONNX nodes for a convolution, batch norm and ReLU,
    the batch norm left unfused), where ``nn.BatchNorm2d`` folds into the convolution (3
    nodes). A layer fed fewer channels than it has (a supernet run narrower) has no plain
    equal: the copy then fails on that input.
    """
    if isinstance(model, MetaBatchNorm2d):
        return model.to_batch_norm()
    plain = deepcopy(model)
    for module in list(plain.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MetaBatchNorm2d):
                setattr(module, name, child.to_batch_norm())
    return plain


def _norm_layers(model: nn.Module) -> dict[str, MetaBatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MetaBatchNorm2d)}


def apply_recorded_statistics(model: nn.Module, recorded: RecordedStatistics) -> None:
    """Fold recorded batch statistics into the running buffers of ``model``'s layers.

    Statistics recorded under ``vmap`` carry a leading task dimension; they are averaged
    over tasks first.
    """
    layers = _norm_layers(model)
    for key, mean in recorded.means.items():
        name, slot = key.rsplit("@", 1)
        var = recorded.variances[key]
        layer = layers[name]
        if mean.dim() == 2:
            mean, var = mean.mean(dim=0), var.mean(dim=0)
        layer.update_running_statistics(int(slot), mean, var)
