"""Task-batched MAML: a meta-batch's tasks through one model at once, each with its own weights.

The looped inner loop runs a task at a time: many small convolutions (5 support images,
75 queries), a Python and autograd overhead per task, and (in NCHW) slow batch-norm and
convolution kernels. Here every operation handles several tasks at once:

* Activations of ``T`` tasks are laid out *grouped*: ``(N, T*C, H, W)`` in channels-last
  memory, task ``t`` owning channels ``t*C .. t*C+C-1`` (``(N, T*F)`` for features).
* A convolution with per-task weights ``(T, C_out, C_in, k, k)`` is one grouped
  convolution (``groups=T``, oneDNN's channels-last kernels); a linear layer is one
  batched matrix multiply.
* Batch normalisation of the grouped layout with ``T*C`` channels computes exactly the
  per-task batch statistics, in one call for all tasks.
* Everything that acts per sample and per channel (ReLU, pooling, spatial means,
  flattening, residual sums) runs unchanged on the grouped layout.

:class:`TaskBatchedModel` traces a model with :mod:`torch.fx` and replays its graph on the
grouped layout. Models made of ``Conv2d``, ``Linear``, :class:`MetaBatchNorm2d`,
activations, pooling, flattening, spatial reductions and element-wise sums (Conv-4,
ResNet-12 and their classifiers) are supported; for anything else
:meth:`TaskBatchedModel.trace` (or the first replay) raises
:class:`BatchingUnsupportedError`, and MAML falls back to its loop over tasks.

:func:`batched_meta_gradients` computes MAML's meta-gradient with it. The support passes of
a group of tasks run together (gradients with ``create_graph`` for second order); the
query passes run in smaller chunks of tasks, each a plain first-order backward to the
adapted weights (bounded memory); one backward through the group's inner loop then turns
those gradients into meta-gradients (the Hessian-vector products of second-order MAML,
for all tasks of the group at once). The result equals the loop's to rounding (tested in
float64); in float32 it is as accurate as the loop's (batch-norm statistics are two-pass).
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import logging
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from metarch.meta.losses import TASK_LOSSES, TaskLoss
from metarch.meta.optim import Hyper, InnerOptimizer, OptState, apply_updates
from metarch.models.context import Phase, forward_context
from metarch.models.norm import MetaBatchNorm2d, RecordedStatistics

__all__ = [
    "BatchedModuleRule",
    "BatchedNormContext",
    "BatchedResult",
    "BatchingUnsupportedError",
    "TaskBatchedModel",
    "accumulate_statistics",
    "batched_adapt",
    "batched_meta_gradients",
    "batched_module_rule",
    "channels_last",
    "concat_channels",
    "from_grouped",
    "register_batched_function",
    "register_batched_module",
    "retain_freed_memory",
    "run_task_shards",
    "scale_per_task",
    "stack_for_tasks",
    "to_grouped",
]

log = logging.getLogger(__name__)

Params = dict[str, Tensor]

_CHANNELS_LAST = torch.channels_last


class BatchingUnsupportedError(RuntimeError):
    """The model contains an operation that cannot run on the task-grouped layout."""


# -- layout ------------------------------------------------------------------------------


def channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory, with unambiguous strides.

    With one channel, NCHW and NHWC memory coincide and PyTorch reads the usual strides as
    NCHW; a convolution then produces (and its whole block computes in) NCHW. The strides
    ``(H*W, 1, W, 1)`` make the format explicit.
    """
    x = x.contiguous(memory_format=_CHANNELS_LAST)
    if x.shape[1] == 1:
        _, _, h, w = x.shape
        x = x.as_strided(x.shape, (h * w, 1, w, 1))
    return x


def to_grouped(x: Tensor) -> Tensor:
    """``(T, N, C, H, W)`` -> ``(N, T*C, H, W)`` channels-last; ``(T, N, F)`` -> ``(N, T*F)``."""
    tasks, count = x.shape[:2]
    if x.dim() == 5:
        channels, height, width = x.shape[2:]
        # Channels-last memory of the grouped tensor is (N, H, W, T, C).
        nhwc = x.permute(1, 3, 4, 0, 2).contiguous()
        return channels_last(nhwc.view(count, height, width, tasks * channels).permute(0, 3, 1, 2))
    return x.transpose(0, 1).reshape(count, -1)


def from_grouped(y: Tensor, tasks: int) -> Tensor:
    """``(N, T*F)`` -> ``(T, N, F)``."""
    return y.reshape(y.shape[0], tasks, -1).transpose(0, 1)


# -- allocator -----------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned: bool | None = None


def concat_channels(tensors: Sequence[Tensor], tasks: int) -> Tensor:
    """Grouped tensors concatenated along each task's channels (``torch.cat(..., dim=1)``).

    Task ``t`` of the result holds task ``t``'s channels of every input, in order, as the
    concatenation of one task's maps would.
    """
    parts = [t.unflatten(1, (tasks, t.shape[1] // tasks)) for t in tensors]
    return torch.cat(parts, dim=2).flatten(1, 2)


def scale_per_task(x: Tensor, scale: Tensor) -> Tensor:
    """Grouped ``x`` (``(N, T*C, ...)``) with task ``t``'s channels times ``scale[t]``.

    For rules that weight per task (a candidate operation's weight in a mixed operation).
    """
    tasks = scale.shape[0]
    per_channel = scale.repeat_interleave(x.shape[1] // tasks)
    return x * per_channel.view(1, -1, *([1] * (x.dim() - 2)))


def retain_freed_memory(
    mmap_threshold: int = 32 * 2**20, trim_threshold: int = 512 * 2**20
) -> bool:
    """Let glibc keep freed tensor memory for reuse instead of returning it to the OS.

    PyTorch's CPU allocator is glibc's ``malloc``. By default, blocks above a (dynamic)
    threshold are fresh ``mmap``s and freed heap memory above 128 KiB-32 MiB is trimmed,
    so every large activation of a task-batched pass is page-faulted in anew (zeroed page
    by page; about 1-2 us per 4 KiB page in a VM): a third of a meta-iteration here.
    This sets ``M_MMAP_THRESHOLD`` (blocks below it come from the heap) and
    ``M_TRIM_THRESHOLD`` (free memory kept at the top of the heap), the documented
    equivalents of the ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
    environment variables. Peak memory is unchanged; memory freed below the peak stays
    with the process (up to ``trim_threshold``). Process-wide, applied once; a no-op
    (returning False) off glibc.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _allocator_tuned = bool(
            mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
            and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
        log.debug("malloc thresholds set: %s", _allocator_tuned)
    return _allocator_tuned


# -- batch norm ---------------------------------------------------------------------------


@dataclass
class BatchedNormContext:
    """What :class:`MetaBatchNorm2d` layers do during one task-batched forward pass.

    Attributes:
        step: Inner step index (the query pass after ``S`` steps is step ``S``).
        use_running: Normalise with the running statistics of ``step``.
        record: Where to record batch statistics, averaged over the tasks (``None``: do
            not record).
        first_order: The pass is differentiated once only (query passes; support passes of
            first-order MAML): batch norm (and a ReLU after it) then runs as one function
            with PyTorch's fused kernels, instead of twice-differentiable operations.
        phase: ``support`` or ``query``: what the forward context tells other modules.
        engine: The engine running the pass (set by it), for rules that run children.
        tasks: Tasks in the pass (set by the engine).
    """

    step: int = 0
    use_running: bool = False
    record: RecordedStatistics | None = None
    first_order: bool = False
    phase: Phase = "query"
    engine: TaskBatchedModel | None = None
    tasks: int = 0


class _BatchNormReLU(torch.autograd.Function):
    """Training-mode batch norm (then ReLU if asked) of a channels-last map, differentiable once.

    PyTorch's channels-last batch-norm kernel computes the batch variance in one pass,
    with float32 errors about ten times those of its NCHW kernel (or of a two-pass
    variance); ReLUs at near-zero pre-activations then flip, and meta-gradients move by
    about 1e-4. Here the statistics are two-pass (on the ``(N*H*W, C)`` matrix view of
    the map), normalisation is PyTorch's fused inference kernel with those statistics, and
    the backward is PyTorch's batch-norm backward kernel.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool
    ) -> Tensor:
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        mean = rows.mean(dim=0)
        centred = rows - mean
        var = centred.square_().mean(dim=0)
        del centred
        out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        if relu:
            out.relu_()
        invstd = var.add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, mean, invstd, out if relu else None)
        ctx.eps = eps
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x, weight, mean, invstd, out = ctx.saved_tensors
        grad = grad.contiguous(memory_format=_CHANNELS_LAST)
        if out is not None:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True]
        )
        return grad_x, grad_weight, grad_bias, None, None


def _batch_norm_rows(x: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
    """Training-mode batch norm of channels-last ``x`` from differentiable operations.

    On the ``(N*H*W, C)`` matrix view every reduction is a fast column sum, in its
    derivatives too: the second-order backward through PyTorch's batch-norm kernel reduces
    4-d channels-last tensors several times more slowly.
    """
    n, c, h, w = x.shape
    rows = x.contiguous(memory_format=_CHANNELS_LAST).permute(0, 2, 3, 1).reshape(-1, c)
    centred = rows - rows.mean(dim=0)
    var = centred.square().mean(dim=0)
    out = centred * (scale * torch.rsqrt(var + eps)) + shift
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _batch_norm(
    layer: MetaBatchNorm2d,
    name: str,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    context: BatchedNormContext,
    relu: bool = False,
) -> Tensor:
    """Per-task batch norm of grouped ``x`` (then ReLU if ``relu``).

    ``weight`` and ``bias`` are ``(T, slots, C)``.
    """
    if x.dim() != 4:
        raise BatchingUnsupportedError(f"batch norm of a {x.dim()}-d input")
    tasks = weight.shape[0]
    slot = min(context.step, layer.slots - 1)
    scale = weight[:, slot].reshape(-1)
    shift = bias[:, slot].reshape(-1)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if context.use_running:
        mean = layer.running_mean[slot].repeat(tasks)
        var = layer.running_var[slot].repeat(tasks)
        out = F.batch_norm(x, mean, var, scale, shift, False, 0.0, layer.eps)
    elif count > 1 and context.first_order:
        out = _BatchNormReLU.apply(channels_last(x), scale, shift, layer.eps, relu)
        relu = False
    elif count > 1:
        out = _batch_norm_rows(x, scale, shift, layer.eps)
    else:
        # A single value per channel: the fused kernel refuses it; the result is the shift.
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
        normalised = (x - mean) * torch.rsqrt(var + layer.eps)
        out = normalised * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    if context.record is not None and not context.use_running:
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1 if count > 1 else 0)
        key = f"{name}@{slot}"
        context.record.means[key] = mean.view(tasks, -1).mean(dim=0)
        context.record.variances[key] = var.view(tasks, -1).mean(dim=0)
    # The batch-norm output is saved by nothing: rectify it in place.
    return out.relu_() if relu else out


# -- tracing and replay -------------------------------------------------------------------

#: Modules that act per sample and per channel: they run unchanged on the grouped layout.
_PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
)

#: Functions that act element-wise or per sample and channel on their first argument.
_PER_CHANNEL_FUNCTIONS: set[Any] = {
    torch.relu,
    F.relu,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    torch.sigmoid,
    torch.tanh,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
}
_PER_CHANNEL_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}


@dataclass(frozen=True)
class BatchedModuleRule:
    """How one module type runs on the grouped task layout.

    Attributes:
        run: ``run(module, name, x, params, context)``: the output for grouped ``x``
            (``(N, T*C, H, W)`` or ``(N, T*F)``), with the per-task parameters ``params``
            stacked ``(T, *shape)`` and keyed by qualified name (``f"{name}.weight"``).
        check: Raises :class:`BatchingUnsupportedError` for a configuration of the module
            the rule cannot batch (checked once, when the model is traced).
    """

    run: Callable[[nn.Module, str, Tensor, Params, BatchedNormContext], Tensor]
    check: Callable[[nn.Module], None] | None = None


_MODULE_RULES: dict[type[nn.Module], BatchedModuleRule] = {}


def register_batched_module(
    *types: type[nn.Module],
    run: Callable[[nn.Module, str, Tensor, Params, BatchedNormContext], Tensor] | None = None,
    check: Callable[[nn.Module], None] | None = None,
) -> None:
    """Teach the task-batched engine a module type.

    Without ``run`` the module is taken to act per sample and per channel (an activation, a
    pooling, a module that only reads the forward context): it runs unchanged on the
    grouped layout. A module with parameters of its own needs a ``run`` that applies each
    task's parameters to that task's channels (see the rules for ``Conv2d`` and ``Linear``).
    A subclass uses the rule of its nearest registered base class.
    """
    rule = BatchedModuleRule(run or _run_unchanged, check)
    for module_type in types:
        _MODULE_RULES[module_type] = rule


def batched_module_rule(module: nn.Module) -> BatchedModuleRule | None:
    """The rule for ``module``'s type (or its nearest registered base), if any."""
    for klass in type(module).__mro__:
        rule = _MODULE_RULES.get(klass)
        if rule is not None:
            return rule
    return None


def _run_unchanged(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    result: Tensor = module(x)
    return result


def _run_conv2d(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, nn.Conv2d)
    weight = params[f"{name}.weight"]
    tasks = weight.shape[0]
    weight = channels_last(weight.reshape(-1, *weight.shape[2:]))
    bias = params[f"{name}.bias"].reshape(-1) if module.bias is not None else None
    return F.conv2d(
        channels_last(x),
        weight,
        bias,
        module.stride,
        module.padding,
        module.dilation,
        module.groups * tasks,
    )


def _check_conv2d(module: nn.Module) -> None:
    assert isinstance(module, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise BatchingUnsupportedError(f"padding mode {module.padding_mode!r}")


def _run_linear(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, nn.Linear)
    if x.dim() != 2:
        raise BatchingUnsupportedError(f"linear layer on a {x.dim()}-d input")
    weight = params[f"{name}.weight"]
    per_task = x.reshape(x.shape[0], weight.shape[0], -1).transpose(0, 1)
    out = torch.bmm(per_task, weight.transpose(1, 2))
    if module.bias is not None:
        out = out + params[f"{name}.bias"].unsqueeze(1)
    return out.transpose(0, 1).reshape(x.shape[0], -1)


def _run_batch_norm(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    assert isinstance(module, MetaBatchNorm2d)
    return _batch_norm(module, name, x, params[f"{name}.weight"], params[f"{name}.bias"], context)


def _run_flatten(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    return x.flatten(1) if x.dim() > 2 else x


def _check_flatten(module: nn.Module) -> None:
    assert isinstance(module, nn.Flatten)
    if module.start_dim != 1 or module.end_dim != -1:
        raise BatchingUnsupportedError("flatten must start at dimension 1")


register_batched_module(*_PER_CHANNEL_MODULES)
register_batched_module(nn.Conv2d, run=_run_conv2d, check=_check_conv2d)
register_batched_module(nn.Linear, run=_run_linear)
register_batched_module(MetaBatchNorm2d, run=_run_batch_norm)
register_batched_module(nn.Flatten, run=_run_flatten, check=_check_flatten)


def register_batched_function(*functions: Any) -> None:
    """Teach the task-batched engine functions that act per sample and per channel."""
    _PER_CHANNEL_FUNCTIONS.update(functions)


def _trace(module: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(module)
    except Exception as exc:  # any tracing failure means: not batchable
        raise BatchingUnsupportedError(f"cannot trace {type(module).__name__}: {exc}") from exc


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Modules with a rule are replayed whole by it, not traced through.
        return batched_module_rule(m) is not None or super().is_leaf_module(
            m, module_qualified_name
        )


def _spatial_dims(dims: Any, ndim: int) -> bool:
    """Whether reduction dims leave the sample (0) and channel (1) dimensions alone."""
    if dims is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return all(isinstance(d, int) and d % ndim >= 2 for d in dims)


@dataclass
class _TracedGraph:
    """A traced forward (of the model, or of one of its sub-modules) ready to replay."""

    graph: fx.Graph
    #: Qualified name of the traced module ("" for the model): its graph's module targets
    #: and parameters are relative to it.
    prefix: str
    #: Batch norms whose only user is a ReLU: the pair runs as one function.
    relu_after: dict[fx.Node, fx.Node]
    #: Of those ReLUs, the ones whose only user is a max-pooling: it runs first, and the
    #: ReLU (and its backward) on the pooled, four times smaller map. Both are monotone,
    #: so ``relu(max_pool(y)) == max_pool(relu(y))`` exactly, and so are the gradients
    #: (the same argmax wherever the maximum is positive; zero gradient elsewhere).
    pool_after: dict[fx.Node, fx.Node] = field(default_factory=dict)

    def qualified(self, target: object) -> str:
        return f"{self.prefix}.{target}" if self.prefix else str(target)


class TaskBatchedModel:
    """A model's forward, replayed for ``T`` tasks at once with stacked per-task parameters.

    Build with :meth:`trace`; call with parameters stacked over tasks (``(T, *shape)``
    for every parameter the graph reads) and inputs ``(T, N, ...)``.

    A module whose forward cannot be traced once for all (it chooses what to run from the
    forward context, like a block a sub-network skips) or that mixes tasks' values in a
    way the graph cannot see (a weighted sum of candidate operations, weighted per task)
    gets a rule of its own (:func:`register_batched_module`); its rule runs the module's
    children through :meth:`run_module` of the engine it finds in the pass's context.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.root = self._prepare(graph, "")
        self._children: dict[str, _TracedGraph] = {}

    @property
    def graph(self) -> fx.Graph:
        """The traced graph of the model."""
        return self.root.graph

    def _prepare(self, graph: fx.Graph, prefix: str) -> _TracedGraph:
        traced = _TracedGraph(graph, prefix, {})
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise BatchingUnsupportedError("only single-input modules can be batched")
        for node in graph.nodes:
            self._check(node, traced)
            if (
                node.op == "call_module"
                and isinstance(self.modules[traced.qualified(node.target)], MetaBatchNorm2d)
                and len(node.users) == 1
            ):
                (user,) = node.users
                if self._is_relu(user, traced):
                    traced.relu_after[node] = user
                    if len(user.users) == 1:
                        (pool,) = user.users
                        if self._is_max_pool(pool, traced):
                            traced.pool_after[user] = pool
        return traced

    def _is_max_pool(self, node: fx.Node, traced: _TracedGraph) -> bool:
        if node.op == "call_module":
            return type(self.modules[traced.qualified(node.target)]) is nn.MaxPool2d
        return node.op == "call_function" and node.target is F.max_pool2d

    def _is_relu(self, node: fx.Node, traced: _TracedGraph) -> bool:
        if node.op == "call_module":
            return type(self.modules[traced.qualified(node.target)]) is nn.ReLU
        if node.op == "call_function":
            return node.target in (torch.relu, F.relu) and len(node.args) == 1
        return node.op == "call_method" and node.target == "relu" and len(node.args) == 1

    @classmethod
    def trace(cls, model: nn.Module) -> TaskBatchedModel:
        """Trace ``model``; raise :class:`BatchingUnsupportedError` if it cannot be batched."""
        return cls(model, _trace(model))

    def run_module(
        self, name: str, x: Tensor, params: Params, context: BatchedNormContext
    ) -> Tensor:
        """Run the sub-module ``name`` on grouped ``x``: by its rule, or its own trace.

        For rules of modules that run their children themselves (see the class docstring).
        """
        module = self.modules[name]
        rule = batched_module_rule(module)
        if rule is not None:
            return rule.run(module, name, x, params, context)
        if name not in self._children:
            self._children[name] = self._prepare(_trace(module), name)
        return self._run_graph(self._children[name], x, params, context)

    def _check(self, node: fx.Node, traced: _TracedGraph) -> None:
        if node.op in ("placeholder", "output"):
            return
        if node.op == "get_attr":
            raise BatchingUnsupportedError(f"direct parameter access {node.target!r}")
        if node.op == "call_module":
            module = self.modules[traced.qualified(node.target)]
            rule = batched_module_rule(module)
            if rule is None:
                raise BatchingUnsupportedError(
                    f"module {type(module).__name__} (register how it is batched with "
                    "register_batched_module)"
                )
            if rule.check is not None:
                rule.check(module)
            return
        target = node.target
        if node.op == "call_function" and (
            target is torch.cat
            or target in _PER_CHANNEL_FUNCTIONS
            or target in _ELEMENTWISE
            or target in (torch.flatten, torch.mean, torch.sum, torch.amax, torch.amin)
        ):
            return
        if node.op == "call_method" and (
            target in _PER_CHANNEL_METHODS
            or target in _ELEMENTWISE_METHODS
            or target in _REDUCTIONS
            or target == "flatten"
        ):
            return
        raise BatchingUnsupportedError(f"{node.op} {target}")

    def __call__(
        self,
        params: Params,
        x: Tensor,
        context: BatchedNormContext,
    ) -> Tensor:
        """Logits ``(T, N, K)`` of inputs ``(T, N, ...)`` under per-task ``params``.

        Modules see the pass's step and phase in the forward context, and inherit its
        other fields (temperature, sub-network) from the caller's.
        """
        context = replace(context, engine=self, tasks=x.shape[0])
        with forward_context(step=context.step, phase=context.phase):
            out = self._run_graph(self.root, to_grouped(x), params, context)
        if out.dim() != 2:
            raise BatchingUnsupportedError("the model must return (N, K) logits")
        return from_grouped(out, x.shape[0])

    def _run_graph(
        self, traced: _TracedGraph, x: Tensor, params: Params, context: BatchedNormContext
    ) -> Tensor:
        """Replay ``traced`` on grouped ``x``; the grouped output."""
        env: dict[fx.Node, Any] = {}

        def load(arg: Any) -> Any:
            return fx.node.map_arg(arg, lambda n: env[n])

        out: Any = None
        for node in traced.graph.nodes:
            if node in env:  # a ReLU done with its batch norm
                continue
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                out = load(node.args[0])
            elif node.op == "call_module" and node in traced.relu_after:
                (value,) = load(node.args)
                name = traced.qualified(node.target)
                module = self.modules[name]
                assert isinstance(module, MetaBatchNorm2d)
                weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                relu = traced.relu_after[node]
                pool = traced.pool_after.get(relu)
                if pool is None:
                    env[node] = env[relu] = _batch_norm(
                        module, name, value, weight, bias, context, relu=True
                    )
                else:
                    # Only the pooling reads the normalised map; the ReLU follows it.
                    normalised = _batch_norm(module, name, value, weight, bias, context)
                    env[node] = env[relu] = normalised
                    env[pool] = F.relu(self._run_node(pool, env, params, context, traced))
            else:
                env[node] = self._run_node(node, env, params, context, traced)
        if not isinstance(out, Tensor):
            raise BatchingUnsupportedError("a batched module must return one tensor")
        return out

    def _run_node(
        self,
        node: fx.Node,
        env: dict[fx.Node, Any],
        params: Params,
        context: BatchedNormContext,
        traced: _TracedGraph,
    ) -> Any:
        """The grouped value of a module, function or method node, from its inputs in ``env``."""
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            (value,) = args
            assert isinstance(value, Tensor)
            return self.run_module(traced.qualified(node.target), value, params, context)
        if node.op == "call_function":
            return self._function(node.target, args, kwargs, context)
        return self._method(str(node.target), args, kwargs)  # call_method

    @staticmethod
    def _function(
        target: Any, args: Sequence[Any], kwargs: dict[str, Any], context: BatchedNormContext
    ) -> Any:
        x = args[0]
        if target is torch.cat:
            if _arg(args, kwargs, 1, "dim", 0) not in (1, -3):
                raise BatchingUnsupportedError("concatenation along other than channels")
            return concat_channels(x, context.tasks)
        if target in _ELEMENTWISE:
            _same_layout(args)
        elif target is torch.flatten:
            if (
                _arg(args, kwargs, 1, "start_dim", 0) != 1
                or _arg(args, kwargs, 2, "end_dim", -1) != -1
            ):
                raise BatchingUnsupportedError("flatten must start at dimension 1")
        elif target in (torch.mean, torch.sum, torch.amax, torch.amin) and not _spatial_dims(
            _arg(args, kwargs, 1, "dim", None), x.dim()
        ):
            raise BatchingUnsupportedError("reductions over samples or channels")
        return target(*args, **kwargs)

    @staticmethod
    def _method(target: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        x = args[0]
        if target in _ELEMENTWISE_METHODS:
            _same_layout(args)
        elif target == "flatten":
            if (
                _arg(args, kwargs, 1, "start_dim", 0) != 1
                or _arg(args, kwargs, 2, "end_dim", -1) != -1
            ):
                raise BatchingUnsupportedError("flatten must start at dimension 1")
        elif target in _REDUCTIONS and not _spatial_dims(
            _arg(args, kwargs, 1, "dim", None), x.dim()
        ):
            raise BatchingUnsupportedError("reductions over samples or channels")
        return getattr(x, target)(*args[1:], **kwargs)


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _same_layout(args: Sequence[Any]) -> None:
    tensors = [a for a in args if isinstance(a, Tensor)]
    if any(t.shape != tensors[0].shape for t in tensors):
        raise BatchingUnsupportedError("element-wise operation between differently shaped tensors")


# -- MAML on task groups ------------------------------------------------------------------


@dataclass
class BatchedResult:
    """Per-task query losses and accuracies (detached) and task-averaged statistics."""

    losses: Tensor
    accuracies: Tensor
    statistics: RecordedStatistics


def stack_for_tasks(param: Tensor, tasks: int) -> Tensor:
    """``param`` repeated for ``tasks`` tasks: ``(tasks, *param.shape)``, differentiable.

    Convolution weights ``(C_out, C_in, k, k)`` are materialised channels-last, so that the
    grouped weight ``(tasks*C_out, C_in, k, k)`` is a channels-last view and inner updates
    (whose gradients come back channels-last) keep that layout: no copies in the graph.
    Other parameters are expanded (no copy).
    """
    if param.dim() != 4:
        return param.expand(tasks, *param.shape)
    out, cin, kh, kw = param.shape
    nhwc = param.permute(0, 2, 3, 1).unsqueeze(0).expand(tasks, out, kh, kw, cin)
    return nhwc.contiguous().permute(0, 1, 4, 2, 3)


def accumulate_statistics(
    total: RecordedStatistics, part: RecordedStatistics, share: float, *, first: bool
) -> None:
    """Add ``share`` times the statistics of ``part`` (the first part replaces)."""
    for key, mean in part.means.items():
        if first or key not in total.means:
            total.means[key] = mean * share
            total.variances[key] = part.variances[key] * share
        else:
            total.means[key] = total.means[key] + mean * share
            total.variances[key] = total.variances[key] + part.variances[key] * share


_T = TypeVar("_T")
_TASK_POOLS: dict[int, ThreadPoolExecutor] = {}


def _task_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` threads with one intra-op thread each.

    Kept for the life of the process: the same threads serve every meta-iteration, so
    their allocator arenas and oneDNN caches are reused instead of grown anew.
    """
    if threads not in _TASK_POOLS:
        _TASK_POOLS[threads] = ThreadPoolExecutor(
            threads,
            thread_name_prefix="metarch-tasks",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    return _TASK_POOLS[threads]


def run_task_shards(
    tasks: int, threads: int, work: Callable[[int, int], _T]
) -> list[tuple[int, int, _T]]:
    """``work(first, end)`` on contiguous shards of ``tasks`` tasks, ``threads`` at a time.

    Small CPU convolutions scale poorly over intra-op threads; independent tasks scale
    well. Each shard runs in its own thread (one intra-op thread each) in a copy of the
    caller's context (the forward context included). When one task is left over (5 tasks
    on 2 threads), the others run as equal shards first and the last task then runs alone
    in the calling thread with all its intra-op threads, instead of one shard taking an
    extra task while the other threads wait for it. Results come back in shard order, so
    a caller that sums them in that order gets a result independent of thread timing.
    With one shard the work runs in the calling thread.

    Returns:
        ``(first, end, result)`` per shard.
    """
    threads = max(1, min(threads, tasks))
    if threads == 1:
        return [(0, tasks, work(0, tasks))]
    even = tasks - 1 if tasks % threads == 1 else tasks
    bounds = [(i * even // threads, (i + 1) * even // threads) for i in range(threads)]
    pool = _task_pool(threads)
    futures = [
        pool.submit(contextvars.copy_context().run, work, first, end) for first, end in bounds
    ]
    done = [(first, end, f.result()) for (first, end), f in zip(bounds, futures, strict=True)]
    if even < tasks:
        done.append((even, tasks, work(even, tasks)))
    return done


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, max(size, 1)):
        yield start, min(total, start + max(size, 1))


def batched_adapt(
    batched: TaskBatchedModel,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    adapt: Sequence[str],
    optimizer: InnerOptimizer,
    state: OptState,
    hyper: Hyper | None,
    steps: int,
    first_order: bool,
    use_running: bool,
    record: RecordedStatistics | None,
    task_loss: TaskLoss,
    batches: Sequence[Tensor | None] | None = None,
) -> tuple[list[Params], OptState]:
    """The inner loop of ``T`` tasks at once: the task-batched :func:`adapt_task`.

    Args:
        batched: The traced model.
        params: Per-task parameters ``(T, *shape)`` (see :func:`stack_for_tasks`).
        x: Support inputs ``(T, N, ...)``.
        y: Support targets ``(T, N, ...)``.
        adapt: Names of the parameters the inner loop changes.
        optimizer: The inner update rule (elementwise: tasks are stacked in its tensors).
        state: Its starting state, for the stacked parameters.
        hyper: The optimizer's learnable hyper-parameters (default: its own).
        steps: Inner steps.
        first_order: Detach inner gradients (else keep the graph for second order).
        use_running: Normalise with running statistics.
        record: Where batch norm records batch statistics (averaged over tasks).
        task_loss: The task's loss.
        batches: Per step, the indices ``(T, B)`` of each task's examples it trains on
            (``None`` for a step on all of them; default: all of them every step).

    Returns:
        The stacked parameters after every step (``[params, ...]``) and the final state.
    """
    trajectory = [params]
    current = params
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    for step in range(steps):
        index = None if batches is None else batches[step]
        step_x, step_y = (x, y) if index is None else (x[rows, index], y[rows, index])
        context = BatchedNormContext(
            step=step,
            use_running=use_running,
            record=record,
            first_order=first_order,
            phase="support",
        )
        names = [n for n in optimizer.updated(adapt, step) if current[n].requires_grad]
        if not names:
            trajectory.append(current)
            continue
        logits = batched(current, step_x, context)
        loss = task_loss.per_task(logits, step_y).sum()
        # A parameter the forward does not use gets a zero gradient, not an error.
        grads = torch.autograd.grad(
            loss,
            [current[n] for n in names],
            create_graph=not first_order,
            allow_unused=True,
            materialize_grads=True,
        )
        updates, state = optimizer.update(
            dict(zip(names, grads, strict=True)),
            state,
            {name: current[name] for name in names},
            step=step,
            hyper=hyper,
        )
        current = apply_updates(current, updates)
        trajectory.append(current)
    return trajectory, state


def batched_meta_gradients(
    batched: TaskBatchedModel,
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    adapt: Sequence[str],
    optimizer: InnerOptimizer,
    hyper: Hyper | None,
    steps: int,
    first_order: bool,
    query_weights: Sequence[float],
    norm_running: tuple[bool, bool],
    record_statistics: bool,
    support_group: int,
    query_chunk: int,
    task_loss: TaskLoss | None = None,
) -> BatchedResult:
    """Accumulate the task-averaged MAML meta-gradient into ``.grad`` of ``params``.

    Args:
        batched: The traced model.
        params: Meta-parameters by name (leaves; their ``.grad`` receives the result).
        support_x: ``(T, N_s, ...)`` support inputs.
        support_y: ``(T, N_s)`` support labels.
        query_x: ``(T, N_q, ...)`` query inputs.
        query_y: ``(T, N_q)`` query labels.
        adapt: Names of the parameters the inner loop changes.
        optimizer: The inner update rule; it must be elementwise (see
            :attr:`~metarch.meta.optim.InnerOptimizer.elementwise`), as it updates the
            parameters of all tasks of a group stacked together.
        hyper: The optimizer's learnable hyper-parameters to read (default: its own).
        steps: Inner steps.
        first_order: Detach inner gradients.
        query_weights: Weight of the query loss after each step 1..steps.
        norm_running: Whether batch norm uses running statistics in (support, query) passes.
        record_statistics: Record batch statistics (averaged over tasks).
        support_group: Tasks whose inner loops run together (and whose graph is held).
        query_chunk: Tasks whose query passes run together.
        task_loss: The task's loss (default cross-entropy).

    Returns:
        Per-task query losses and accuracies, and the recorded statistics.
    """
    if not optimizer.elementwise:
        raise BatchingUnsupportedError(
            f"the inner optimizer {type(optimizer).__name__} couples elements, so tasks "
            "stacked together would change each other's updates"
        )
    task_loss = task_loss or TASK_LOSSES.get("cross_entropy")
    tasks = support_x.shape[0]
    losses: list[Tensor] = []
    accuracies: list[Tensor] = []
    statistics = RecordedStatistics()
    # Steps whose query losses are needed (always the last one).
    weights = [1.0 if steps == 0 else 0.0, *query_weights]
    needed = [s for s in range(steps + 1) if weights[s] != 0.0 or s == steps]
    for g0, g1 in _chunks(tasks, support_group):
        group = g1 - g0
        record = RecordedStatistics() if record_statistics else None
        current = {name: stack_for_tasks(p, group) for name, p in params.items()}
        trajectory, _ = batched_adapt(
            batched,
            current,
            support_x[g0:g1],
            support_y[g0:g1],
            adapt=adapt,
            optimizer=optimizer,
            state=optimizer.init({name: current[name] for name in adapt}),
            hyper=hyper,
            steps=steps,
            first_order=first_order,
            use_running=norm_running[0],
            record=record,
            task_loss=task_loss,
        )
        # Query passes in chunks: gradients w.r.t. the adapted weights, graph freed per chunk.
        outputs: list[Tensor] = []
        output_grads: list[Tensor] = []
        task_losses = torch.zeros(group, dtype=query_x.dtype, device=query_x.device)
        for step in needed:
            weight = weights[step]
            adapted = trajectory[step]
            names = [n for n in adapt if adapted[n].requires_grad] if step > 0 else []
            chunk_grads: dict[str, list[Tensor]] = {n: [] for n in names}
            for c0, c1 in _chunks(group, query_chunk):
                chunk = {}
                for name, p in params.items():
                    if name in names:
                        chunk[name] = adapted[name][c0:c1].detach().requires_grad_()
                    else:
                        chunk[name] = stack_for_tasks(p, c1 - c0)
                chunk_record = RecordedStatistics() if record is not None else None
                context = BatchedNormContext(
                    step=step,
                    use_running=norm_running[1],
                    record=chunk_record if step == steps else None,
                    first_order=True,
                )
                logits = batched(chunk, query_x[g0 + c0 : g0 + c1], context)
                if chunk_record is not None and record is not None:
                    accumulate_statistics(record, chunk_record, (c1 - c0) / group, first=c0 == 0)
                per_task = task_loss.per_task(logits, query_y[g0 + c0 : g0 + c1])
                if step == steps:
                    scores = task_loss.score(logits.detach(), query_y[g0 + c0 : g0 + c1])
                    accuracies.append(scores)
                task_losses[c0:c1] += weight * per_task.detach()
                if per_task.requires_grad:
                    (per_task.sum() * (weight / tasks)).backward()
                for name in names:
                    leaf_grad = chunk[name].grad
                    chunk_grads[name].append(
                        leaf_grad if leaf_grad is not None else torch.zeros_like(chunk[name])
                    )
            for name in names:
                outputs.append(adapted[name])
                output_grads.append(torch.cat(chunk_grads[name]))
        if outputs:
            torch.autograd.backward(outputs, output_grads)
        losses.append(task_losses)
        if record is not None:
            accumulate_statistics(statistics, record, group / tasks, first=g0 == 0)
    return BatchedResult(torch.cat(losses), torch.cat(accuracies), statistics)
