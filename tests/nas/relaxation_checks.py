"""Checks every continuous relaxation must pass, shared by the spaces' tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metarch.meta import MAML
from metarch.models.context import forward_context
from tests.meta.helpers import flat_grad, make_batch


def assert_batched_meta_gradient_equals_the_loop(
    relaxation: Callable[[], torch.nn.Module], temperature: float
) -> None:
    """Second-order MAML with a per-task architecture Adam: task-batched = loop.

    Architecture weights adapt per task, so after the first step tasks differ in which
    operations fall below the threshold.
    """
    grads = []
    for batching in ("loop", "batched"):
        model = relaxation()
        learner = MAML(
            model,
            inner_lr=0.1,
            steps=2,
            batching=batching,
            inner_optimizer={"weights": "sgd", "architecture": {"name": "adam", "lr": 0.2}},
            task_threads=1,
        )
        with forward_context(temperature=temperature):
            learner.compute_meta_gradients(make_batch(tasks=3, ways=3))
        assert learner.batching == batching
        grads.append(flat_grad([p for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-10)
    assert grads[0].abs().sum() > 0


def operations_run(network: torch.nn.Module, depth: int, x: torch.Tensor) -> list[str]:
    """Names of the candidate operations (modules ``depth`` dots below the root, inside
    ``.edges.``) that one forward of ``x`` runs."""
    calls: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
        for name, module in network.named_modules()
        if ".edges." in name and name.count(".") == depth
    ]
    with torch.no_grad():
        network(x)
    for handle in handles:
        handle.remove()
    return calls
