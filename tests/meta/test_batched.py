from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarch.meta import MAML
from metarch.meta.batched import (
    BatchedNormContext,
    BatchingUnsupportedError,
    TaskBatchedModel,
    channels_last,
    retain_freed_memory,
    run_task_shards,
    stack_for_tasks,
    to_grouped,
)
from metarch.meta.maml import LrMode
from metarch.models import FewShotClassifier, create_model
from metarch.models.norm import BatchNormContext, NormPolicy, batch_norm_context
from tests.meta.helpers import flat_grad, make_batch, tiny_classifier

POLICIES = [p.value for p in NormPolicy]


def _meta_gradients(
    model: nn.Module, batching: str, **options: object
) -> tuple[torch.Tensor, torch.Tensor, MAML, tuple[float, float]]:
    size = int(options.pop("size", 12))  # type: ignore[call-overload]
    learner = MAML(model, inner_lr=0.3, batching=batching, **options)  # type: ignore[arg-type]
    metrics = learner.compute_meta_gradients(make_batch(size=size))
    assert learner.batching == batching  # no silent fallback
    buffers = [b.flatten() for b in model.buffers()]
    return (
        flat_grad(list(learner.parameters())),
        torch.cat(buffers) if buffers else torch.zeros(0),
        learner,
        (metrics.loss, metrics.accuracy),
    )


@pytest.mark.parametrize(
    ("policy", "options"),
    [(policy, {"steps": steps}) for policy in POLICIES for steps in (1, 3)]
    + [
        ("per_step", {"steps": 2, "multi_step_loss": True}),
        ("batch", {"steps": 2, "lr_mode": "per_layer_step"}),
        ("frozen", {"steps": 1, "lr_mode": "per_parameter"}),
        ("batch", {"steps": 2, "adapt": "head"}),
        ("batch", {"steps": 2, "first_order": True}),
        ("batch", {"steps": 0}),
    ],
)
@pytest.mark.parametrize("chunks", [(8, 4, 1), (3, 2, 3), (1, 1, 2)])
def test_batched_and_loop_give_the_same_second_order_meta_gradient(
    policy: str, options: dict[str, object], chunks: tuple[int, int, int]
) -> None:
    # chunks: support group, query chunk, task threads.
    steps = int(options["steps"])  # type: ignore[call-overload]
    results = {}
    for batching in ("loop", "batched"):
        model = tiny_classifier(steps=steps, per_step_norm=policy == "per_step")
        with torch.no_grad():  # non-trivial running statistics for the frozen policy
            for buffer in model.buffers():
                buffer.add_(torch.rand(buffer.shape, generator=torch.Generator().manual_seed(3)))
        extra = (
            {"support_group": chunks[0], "query_chunk": chunks[1], "task_threads": chunks[2]}
            if batching == "batched"
            else {}
        )
        results[batching] = _meta_gradients(model, batching, norm_policy=policy, **options, **extra)
    loop, batched = results["loop"], results["batched"]
    assert loop[0].abs().max() > 0
    torch.testing.assert_close(batched[0], loop[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batched[1], loop[1], rtol=1e-9, atol=1e-12)
    assert batched[3][0] == pytest.approx(loop[3][0], rel=1e-12)
    assert batched[3][1] == pytest.approx(loop[3][1], abs=1e-6)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_batched_matches_the_loop_on_other_backbones(name: str) -> None:
    torch.manual_seed(0)
    options = {"widths": (4, 4, 4, 4)} if name == "resnet12" else {"hidden": 5}
    backbone = create_model(name, in_channels=1, **options)
    model = FewShotClassifier(backbone, 3, (1, 16, 16)).double()
    if name == "conv4":
        # Every block's ReLU runs after its max-pooling (on a quarter of the map), so the
        # equality below checks the reordered graph against the model's own order.
        traced = TaskBatchedModel.trace(model).root
        assert len(traced.pool_after) == len(traced.relu_after) == 4
    loop = _meta_gradients(copy.deepcopy(model), "loop", size=16, steps=2)
    batched = _meta_gradients(copy.deepcopy(model), "batched", size=16, steps=2, support_group=3)
    torch.testing.assert_close(batched[0], loop[0], rtol=1e-9, atol=1e-12)


def test_task_batched_forward_equals_per_task_forward() -> None:
    model = tiny_classifier()
    batched = TaskBatchedModel.trace(model)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    stacked = {
        name: stack_for_tasks(p, 3).detach()
        + 0.1 * torch.randn(3, *p.shape, generator=generator, dtype=p.dtype)
        for name, p in params.items()
    }
    x = make_batch(tasks=3).query_images
    logits = batched(stacked, x, BatchedNormContext())
    for t in range(3):
        with batch_norm_context(BatchNormContext()):
            expected = functional_call(model, {n: v[t] for n, v in stacked.items()}, (x[t],))
        torch.testing.assert_close(logits[t], expected, rtol=1e-10, atol=1e-12)


def test_one_channel_inputs_stay_channels_last() -> None:
    # One-channel tensors read as NCHW; a convolution would then switch its whole block to
    # NCHW (copies and slow kernels in every backward).
    x = to_grouped(torch.rand(1, 5, 1, 8, 8))
    weight = channels_last(torch.rand(4, 1, 3, 3))
    out = F.conv2d(x, weight, stride=2, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.stride(1) == 1


class _ChannelSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.softmax(self.conv(x), dim=1)  # mixes channels: not batchable
        out: torch.Tensor = self.head(maps.mean(dim=(2, 3)))
        return out


@pytest.mark.parametrize("batching", ["batched", "auto"])
def test_models_that_cannot_be_batched_fall_back_to_the_loop(
    caplog: pytest.LogCaptureFixture, batching: str
) -> None:
    torch.manual_seed(0)
    model = _ChannelSoftmax().double()
    with pytest.raises(BatchingUnsupportedError):
        TaskBatchedModel.trace(model)
    reference = MAML(copy.deepcopy(model), inner_lr=0.3, batching="loop")
    learner = MAML(model, inner_lr=0.3, batching=batching)  # type: ignore[arg-type]
    # Gradients accumulated before the call are added to, not lost or doubled.
    for param in [*reference.parameters(), *learner.parameters()]:
        param.grad = torch.ones_like(param)
    reference.compute_meta_gradients(make_batch())
    with caplog.at_level(logging.WARNING):
        learner.compute_meta_gradients(make_batch())
    assert learner.batching == "loop"
    assert "cannot batch" in caplog.text
    torch.testing.assert_close(
        flat_grad(list(learner.parameters())), flat_grad(list(reference.parameters()))
    )


def test_auto_batching_runs_task_batched() -> None:
    learner = MAML(tiny_classifier(), inner_lr=0.3)
    learner.compute_meta_gradients(make_batch())
    assert learner.batching == "auto" and learner._batched is not None


def test_chunk_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        MAML(tiny_classifier(), batching="batched", query_chunk=0)
    with pytest.raises(ValueError, match="batching"):
        MAML(tiny_classifier(), batching="bogus")  # type: ignore[arg-type]


def test_retain_freed_memory_is_idempotent() -> None:
    first = retain_freed_memory()
    assert retain_freed_memory() is first


@pytest.mark.parametrize("lr_mode", ["fixed", "per_layer_step"])
def test_task_threads_are_deterministic_and_match_one_thread(lr_mode: LrMode) -> None:
    def run(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = tiny_classifier(steps=2).float()
        learner = MAML(
            model,
            inner_lr=0.3,
            steps=2,
            lr_mode=lr_mode,
            batching="batched",
            support_group=2,
            task_threads=threads,
        )
        batch = make_batch(tasks=12, dtype=torch.float32)
        learner.compute_meta_gradients(batch)
        learner.compute_meta_gradients(batch)  # accumulates onto existing .grad
        buffers = torch.cat([b.flatten() for b in model.buffers()])
        return flat_grad(list(learner.parameters())), buffers

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one, threaded, again = run(1), run(3), run(3)
        # Workers run one intra-op thread each; the caller's setting is left alone.
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # Same result to float32 rounding; bit-identical between threaded runs.
    torch.testing.assert_close(threaded[0], one[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(threaded[1], one[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(threaded[0], again[0]) and torch.equal(threaded[1], again[1])


@pytest.mark.parametrize("batching", ["loop", "vmap", "batched"])
def test_parameters_unused_in_the_forward_get_no_or_zero_gradient(batching: str) -> None:
    """A model with a parameter its forward never uses (an unused branch, a sub-network's
    skipped layer) trains in every path: the parameter's meta-gradient is zero."""

    def run(with_unused: bool) -> tuple[list[torch.Tensor], torch.nn.Module]:
        torch.manual_seed(0)
        model = tiny_classifier(steps=2).double()
        if with_unused:
            model.unused = torch.nn.Linear(3, 2).double()
        learner = MAML(model, inner_lr=0.3, steps=2, batching=batching)  # type: ignore[arg-type]
        learner.compute_meta_gradients(make_batch(tasks=3))
        used = [p.grad for n, p in model.named_parameters() if not n.startswith("unused.")]
        return [g for g in used if g is not None], model

    plain, _ = run(False)
    grads, model = run(True)
    for a, b in zip(grads, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for p in model.unused.parameters():  # type: ignore[union-attr]
        assert p.grad is None or not p.grad.any()


def test_a_task_left_over_runs_alone_on_all_threads_after_the_even_shards() -> None:
    import threading

    def work(first: int, end: int) -> tuple[str, int]:
        return threading.current_thread().name, torch.get_num_threads()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        done = run_task_shards(5, 2, work)
        assert [(first, end) for first, end, _ in done] == [(0, 2), (2, 4), (4, 5)]
        workers = [result for _, _, result in done]
        assert all(name.startswith("metarch-tasks") and n == 1 for name, n in workers[:2])
        assert workers[2] == (threading.current_thread().name, 2)
        # Two left over spread over the shards as before.
        assert [(f, e) for f, e, _ in run_task_shards(5, 3, work)] == [(0, 1), (1, 3), (3, 5)]
    finally:
        torch.set_num_threads(before)
