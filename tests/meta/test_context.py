"""The forward context reaches every module, in every task path and in task threads."""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from metarch.meta import MAML
from metarch.meta.batched import register_batched_module
from metarch.models.context import current_context, forward_context
from tests.meta.helpers import make_batch, tiny_classifier


class Probe(nn.Module):
    """Scales its input by the context's temperature and logs what it saw."""

    seen: ClassVar[list[tuple[int, str, float, str]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        context = current_context()
        with self.lock:
            Probe.seen.append(
                (
                    context.step,
                    context.phase,
                    context.current_temperature,
                    threading.current_thread().name,
                )
            )
        return x * context.current_temperature


register_batched_module(Probe)  # acts per sample and channel: runs as it is


def probed_classifier() -> nn.Module:
    model = tiny_classifier(steps=2).double()
    model.backbone = nn.Sequential(Probe(), model.backbone)
    return model


def test_contexts_nest_and_inherit() -> None:
    assert current_context().phase == "plain" and current_context().temperature == 1.0
    with forward_context(temperature=0.5, subnet={"depth": 2}):
        with forward_context(step=3, phase="support") as inner:
            assert (inner.step, inner.phase, inner.temperature) == (3, "support", 0.5)
            assert inner.subnet == {"depth": 2}
        assert current_context().step == 0
    assert current_context().temperature == 1.0


@pytest.mark.parametrize(
    ("batching", "threads"), [("loop", None), ("vmap", None), ("batched", 1), ("batched", 2)]
)
def test_every_path_passes_step_phase_and_temperature(batching: str, threads: int | None) -> None:
    Probe.seen.clear()
    torch.manual_seed(0)
    learner = MAML(
        probed_classifier(),
        inner_lr=0.3,
        steps=2,
        batching=batching,  # type: ignore[arg-type]
        task_threads=threads,
        support_group=2,
    )
    with forward_context(temperature=0.25):
        learner.compute_meta_gradients(make_batch(tasks=4))
    steps_phases = {(step, phase) for step, phase, _, _ in Probe.seen}
    assert steps_phases == {(0, "support"), (1, "support"), (2, "query")}
    assert {temperature for _, _, temperature, _ in Probe.seen} == {0.25}
    if threads == 2:
        assert any(name.startswith("metarch-tasks") for *_, name in Probe.seen)


def test_the_temperature_changes_the_meta_gradient_the_same_way_in_every_path() -> None:
    def gradient(batching: str) -> Tensor:
        torch.manual_seed(0)
        learner = MAML(probed_classifier(), inner_lr=0.3, steps=2, batching=batching)  # type: ignore[arg-type]
        with forward_context(temperature=0.5):
            learner.compute_meta_gradients(make_batch(tasks=3))
        return torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])

    loop = gradient("loop")
    torch.testing.assert_close(gradient("batched"), loop, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gradient("vmap"), loop, rtol=1e-9, atol=1e-12)


def _anneal(step: int) -> float:
    return 1.0 - 0.25 * step


def _scheduled(batching: str, threads: int | None) -> tuple[set[tuple[int, float]], Tensor]:
    Probe.seen.clear()
    torch.manual_seed(0)
    learner = MAML(
        probed_classifier(),
        inner_lr=0.3,
        steps=2,
        batching=batching,  # type: ignore[arg-type]
        task_threads=threads,
    )
    with forward_context(temperature_schedule=_anneal):
        learner.compute_meta_gradients(make_batch(tasks=3))
    seen = {(step, temperature) for step, _, temperature, _ in Probe.seen}
    gradient = torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])
    return seen, gradient


@pytest.mark.parametrize(("batching", "threads"), [("vmap", None), ("batched", 2)])
def test_a_temperature_schedule_anneals_per_inner_step_in_every_path(
    batching: str, threads: int | None
) -> None:
    loop_seen, loop = _scheduled("loop", None)
    seen, gradient = _scheduled(batching, threads)
    assert seen == loop_seen == {(0, 1.0), (1, 0.75), (2, 0.5)}  # the query pass is step 2
    torch.testing.assert_close(gradient, loop, rtol=1e-9, atol=1e-12)
