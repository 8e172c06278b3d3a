"""MetaBatchNorm2d: plain-module parity, context semantics, policies, higher-order gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metarch.models.norm import (
    BatchNormContext,
    MetaBatchNorm2d,
    NormPolicy,
    RecordedStatistics,
    apply_recorded_statistics,
    batch_norm_context,
    name_norm_layers,
    with_plain_batch_norms,
)

CHANNELS = 3


def _inputs(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype) * 2.0 + 0.5


def _randomise(layer: MetaBatchNorm2d, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
        layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)


def _unbiased_variance(x: Tensor) -> Tensor:
    return x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, correction=1)


class _Net(nn.Module):
    """A conv and a norm under a nested name, so qualified names are non-trivial."""

    def __init__(self, steps: int = 1, per_step: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(CHANNELS, CHANNELS, 1),
            MetaBatchNorm2d(CHANNELS, steps=steps, per_step=per_step),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


# -- without a context: exactly nn.BatchNorm2d ---------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_the_plain_copy_computes_what_the_layers_do_and_leaves_them_as_they_were(
    training: bool,
) -> None:
    net = _Net(steps=2, per_step=True)
    layer = net.body[1]
    assert isinstance(layer, MetaBatchNorm2d)
    _randomise(layer)
    net.train(training)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plain = with_plain_batch_norms(net)
    x = _inputs(4, CHANNELS, 5, 5)
    out = plain(x)
    assert isinstance(net.body[1], MetaBatchNorm2d)  # the original is untouched
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])
    torch.testing.assert_close(out, net(x))
    assert isinstance(plain, _Net) and isinstance(plain.body[1], nn.BatchNorm2d)
    assert plain.training is training
    assert not any(isinstance(m, MetaBatchNorm2d) for m in plain.modules())
    assert isinstance(with_plain_batch_norms(layer), nn.BatchNorm2d)


@pytest.mark.parametrize("per_step", [False, True])
def test_without_context_matches_batchnorm2d(per_step: bool) -> None:
    meta = MetaBatchNorm2d(CHANNELS, steps=2, per_step=per_step, momentum=0.3)
    _randomise(meta)
    reference = nn.BatchNorm2d(CHANNELS, momentum=0.3)
    assert reference.running_mean is not None and reference.running_var is not None
    with torch.no_grad():
        reference.weight.copy_(meta.weight[0])
        reference.bias.copy_(meta.bias[0])
        reference.running_mean.copy_(meta.running_mean[0])
        reference.running_var.copy_(meta.running_var[0])
    untouched_mean = meta.running_mean[1:].clone()

    for seed in range(3):
        x = _inputs(4, CHANNELS, 5, 5, seed=seed)
        torch.testing.assert_close(meta(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(meta.running_mean[0], reference.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(meta.running_var[0], reference.running_var, rtol=0, atol=0)
    # Only slot 0 is a plain BatchNorm2d; the other slots are left alone.
    torch.testing.assert_close(meta.running_mean[1:], untouched_mean, rtol=0, atol=0)

    meta.eval()
    reference.eval()
    x = _inputs(2, CHANNELS, 3, 3, seed=9)
    torch.testing.assert_close(meta(x), reference(x), rtol=0, atol=0)


# -- inside a context ----------------------------------------------------------------------


def test_context_batch_statistics_records_without_touching_buffers() -> None:
    net = _Net()
    name_norm_layers(net)
    layer = net.body[1]
    assert isinstance(layer, MetaBatchNorm2d)
    _randomise(layer)
    running_mean, running_var = layer.running_mean.clone(), layer.running_var.clone()
    x = _inputs(4, CHANNELS, 5, 5)
    hidden = net.body[0](x)

    record = RecordedStatistics()
    with batch_norm_context(BatchNormContext(step=0, use_running=False, record=record)):
        out = net(x)

    expected = F.batch_norm(hidden, None, None, layer.weight[0], layer.bias[0], training=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(layer.running_mean, running_mean, rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, running_var, rtol=0, atol=0)
    assert set(record.means) == set(record.variances) == {"body.1@0"}
    torch.testing.assert_close(record.means["body.1@0"], hidden.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(record.variances["body.1@0"], _unbiased_variance(hidden))
    assert not record.means["body.1@0"].requires_grad


def test_context_without_record_records_nothing() -> None:
    layer = MetaBatchNorm2d(CHANNELS)
    x = _inputs(2, CHANNELS, 3, 3)
    with batch_norm_context(BatchNormContext(step=0, use_running=False, record=None)):
        out = layer(x)
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True))


def test_context_is_reset_after_the_block() -> None:
    layer = MetaBatchNorm2d(CHANNELS)
    x = _inputs(4, CHANNELS, 3, 3)
    with batch_norm_context(BatchNormContext(use_running=False)):
        layer(x)
    assert torch.equal(layer.running_mean, torch.zeros(1, CHANNELS))
    layer(x)  # plain semantics again: training mode updates the running statistics
    assert not torch.equal(layer.running_mean, torch.zeros(1, CHANNELS))


@pytest.mark.parametrize(("step", "slot"), [(0, 0), (1, 1), (2, 2), (3, 2), (10, 2)])
def test_running_statistics_of_the_step_slot(step: int, slot: int) -> None:
    layer = MetaBatchNorm2d(CHANNELS, steps=2, per_step=True)  # slots 0, 1, 2
    assert layer.slots == 3
    _randomise(layer)
    x = _inputs(4, CHANNELS, 3, 3)
    with batch_norm_context(BatchNormContext(step=step, use_running=True)):
        out = layer(x)
    expected = F.batch_norm(
        x,
        layer.running_mean[slot],
        layer.running_var[slot],
        layer.weight[slot],
        layer.bias[slot],
        training=False,
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("per_step", "step", "key"), [(True, 7, "body.1@2"), (False, 2, "body.1@0")]
)
def test_steps_beyond_the_slots_use_the_last_slot(per_step: bool, step: int, key: str) -> None:
    net = _Net(steps=2, per_step=per_step)
    name_norm_layers(net)
    layer = net.body[1]
    assert isinstance(layer, MetaBatchNorm2d)
    _randomise(layer)
    slot = layer.slots - 1
    x = _inputs(4, CHANNELS, 3, 3)
    record = RecordedStatistics()
    with batch_norm_context(BatchNormContext(step=step, record=record)):
        out = net(x)
    hidden = net.body[0](x)
    expected = F.batch_norm(hidden, None, None, layer.weight[slot], layer.bias[slot], training=True)
    torch.testing.assert_close(out, expected)
    assert list(record.means) == [key]


def test_apply_recorded_statistics_uses_momentum_and_averages_tasks() -> None:
    net = _Net(steps=1, per_step=True)
    name_norm_layers(net)
    layer = net.body[1]
    assert isinstance(layer, MetaBatchNorm2d)
    layer.momentum = 0.25
    _randomise(layer)
    before_mean, before_var = layer.running_mean.clone(), layer.running_var.clone()
    task_means = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    task_vars = torch.tensor([[2.0, 2.0, 2.0], [4.0, 6.0, 8.0]])
    single_mean, single_var = torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 3.0])
    recorded = RecordedStatistics(
        means={"body.1@1": task_means, "body.1@0": single_mean},
        variances={"body.1@1": task_vars, "body.1@0": single_var},
    )

    apply_recorded_statistics(net, recorded)

    def lerp(old: Tensor, new: Tensor) -> Tensor:
        return old * 0.75 + new * 0.25

    torch.testing.assert_close(layer.running_mean[0], lerp(before_mean[0], single_mean))
    torch.testing.assert_close(layer.running_var[0], lerp(before_var[0], single_var))
    torch.testing.assert_close(layer.running_mean[1], lerp(before_mean[1], task_means.mean(0)))
    torch.testing.assert_close(layer.running_var[1], lerp(before_var[1], task_vars.mean(0)))


# -- policies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "inner", "training", "expected"),
    [
        # batch: batch statistics everywhere (transductive evaluation).
        (NormPolicy.BATCH, True, True, False),
        (NormPolicy.BATCH, False, True, False),
        (NormPolicy.BATCH, True, False, False),
        (NormPolicy.BATCH, False, False, False),
        # per_step: batch statistics in training, running ones at evaluation.
        (NormPolicy.PER_STEP, True, True, False),
        (NormPolicy.PER_STEP, False, True, False),
        (NormPolicy.PER_STEP, True, False, True),
        (NormPolicy.PER_STEP, False, False, True),
        # frozen: only the meta-training query pass uses batch statistics.
        (NormPolicy.FROZEN, True, True, True),
        (NormPolicy.FROZEN, False, True, False),
        (NormPolicy.FROZEN, True, False, True),
        (NormPolicy.FROZEN, False, False, True),
    ],
)
def test_policy_truth_table(
    policy: NormPolicy, inner: bool, training: bool, expected: bool
) -> None:
    assert policy.uses_running_statistics(inner=inner, training=training) is expected


def test_policy_from_string() -> None:
    assert NormPolicy("per_step") is NormPolicy.PER_STEP
    with pytest.raises(ValueError):
        NormPolicy("running")


# -- higher-order gradients and vmap -------------------------------------------------------


def _functional_norm(
    layer: MetaBatchNorm2d, step: int = 0
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    buffers = dict(layer.named_buffers())

    def norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        with batch_norm_context(BatchNormContext(step=step, use_running=False)):
            out: Tensor = functional_call(layer, {"weight": weight, "bias": bias, **buffers}, (x,))
        return out

    return norm


def test_second_order_gradients_are_correct() -> None:
    layer = MetaBatchNorm2d(2, steps=1, per_step=True).double()
    x = _inputs(3, 2, 2, 2, dtype=torch.float64).requires_grad_()
    weight = (torch.rand(2, 2, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(2, 2, dtype=torch.float64).requires_grad_()
    norm = _functional_norm(layer, step=1)
    assert torch.autograd.gradcheck(norm, (x, weight, bias))
    assert torch.autograd.gradgradcheck(norm, (x, weight, bias))


def test_vmap_over_tasks_matches_a_loop() -> None:
    net = _Net(steps=1, per_step=True)
    name_norm_layers(net)
    layer = net.body[1]
    assert isinstance(layer, MetaBatchNorm2d)
    _randomise(layer)
    running_mean = layer.running_mean.clone()
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    tasks = _inputs(2, 4, CHANNELS, 3, 3)  # (T, N, C, H, W)

    def one_task(x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        record = RecordedStatistics()
        with batch_norm_context(BatchNormContext(step=1, use_running=False, record=record)):
            out: Tensor = functional_call(net, {**params, **buffers}, (x,))
        return out, record.means, record.variances

    outs, means, variances = torch.func.vmap(one_task)(tasks)
    for t in range(tasks.shape[0]):
        out, mean, variance = one_task(tasks[t])
        torch.testing.assert_close(outs[t], out)
        assert set(means) == set(mean) == {"body.1@1"}
        torch.testing.assert_close(means["body.1@1"][t], mean["body.1@1"])
        torch.testing.assert_close(variances["body.1@1"][t], variance["body.1@1"])
    torch.testing.assert_close(layer.running_mean, running_mean, rtol=0, atol=0)

    # Running statistics, shared by the tasks, under vmap too.
    def running(x: Tensor) -> Tensor:
        with batch_norm_context(BatchNormContext(step=0, use_running=True)):
            out: Tensor = functional_call(net, {**params, **buffers}, (x,))
        return out

    batched = torch.func.vmap(running)(tasks)
    for t in range(tasks.shape[0]):
        torch.testing.assert_close(batched[t], running(tasks[t]))
