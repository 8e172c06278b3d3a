"""Inner optimizers: exact updates, composition, and second-order gradients through them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from metarch.meta.optim import (
    INNER_OPTIMIZERS,
    Chain,
    ClipByGlobalNorm,
    InnerOptimizer,
    LearnedRate,
    OnSteps,
    Params,
    Partition,
    Scale,
    ScaleByAdam,
    adam,
    adam_second_moments,
    apply_updates,
    route_by_pattern,
    sgd,
    with_adam_second_moments,
)

F64 = torch.float64


def problem(seed: int = 0) -> tuple[Params, Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """Parameters of a tiny regression net, its support loss and its query loss."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "body.weight": torch.randn(4, 3, generator=g, dtype=F64),
        "head.weight": torch.randn(1, 4, generator=g, dtype=F64),
        "arch.alpha": torch.randn(4, generator=g, dtype=F64),
    }
    xs, xq = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    ys, yq = torch.randn(6, 1, generator=g, dtype=F64), torch.randn(5, 1, generator=g, dtype=F64)

    def net(p: Params, x: Tensor) -> Tensor:
        hidden = torch.tanh(x @ p["body.weight"].T) * torch.softmax(p["arch.alpha"], 0)
        return hidden @ p["head.weight"].T

    def support(p: Params) -> Tensor:
        return ((net(p, xs) - ys) ** 2).mean()

    def query(p: Params) -> Tensor:
        return ((net(p, xq) - yq) ** 2).mean()

    return params, support, query


def adapt(
    optimizer: InnerOptimizer,
    params: Params,
    support: Callable[[Params], Tensor],
    steps: int,
    hyper: dict[str, Tensor] | None = None,
) -> Params:
    """``steps`` differentiable inner steps (create_graph: second order)."""
    state = optimizer.init(params)
    current = params
    for step in range(steps):
        names = list(current)
        grads = torch.autograd.grad(
            support(current), [current[n] for n in names], create_graph=True
        )
        current, state = optimizer.step(
            current, dict(zip(names, grads, strict=True)), state, step=step, hyper=hyper
        )
    return current


def test_sgd_is_a_plain_step() -> None:
    params = {"w": torch.tensor([1.0, 2.0])}
    grads = {"w": torch.tensor([0.5, -1.0])}
    new, state = sgd(0.1).step(params, grads, {}, step=0)
    torch.testing.assert_close(new["w"], torch.tensor([0.95, 2.1]))
    assert state == {}


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999), (0.5, 0.9)])
def test_adam_matches_torch_adam(betas: tuple[float, float]) -> None:
    params, support, _ = problem()
    reference = {n: p.clone().requires_grad_() for n, p in params.items()}
    torch_adam = torch.optim.Adam(list(reference.values()), lr=0.05, betas=betas, eps=1e-8)
    ours = adam(0.05, betas, eps=1e-8, eps_root=0.0)
    state = ours.init(params)
    current = dict(params)
    for step in range(4):
        torch_adam.zero_grad()
        support(reference).backward()
        torch_adam.step()
        names = list(current)
        leaves = {n: current[n].detach().requires_grad_() for n in names}
        grads = torch.autograd.grad(support(leaves), [leaves[n] for n in names])
        current, state = ours.step(
            {n: v.detach() for n, v in leaves.items()},
            dict(zip(names, grads, strict=True)),
            state,
            step=step,
        )
    for name in params:
        torch.testing.assert_close(current[name], reference[name].detach(), rtol=1e-12, atol=1e-12)


def test_adam_state_carries_across_tasks() -> None:
    """Two tasks with one carried state equal one uninterrupted run (Reptile's inner Adam)."""
    params = {"w": torch.zeros(3)}
    gradients = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -1.0])]
    rule = adam(0.1, (0.0, 0.999))
    state = rule.init(params)
    _, state = rule.update({"w": gradients[0]}, state, params, step=0)  # task 1
    carried, _ = rule.update({"w": gradients[1]}, state, params, step=0)  # task 2, step 0
    v = 0.001 * (0.999 * gradients[0] ** 2 + gradients[1] ** 2)
    expected = -0.1 * gradients[1] / (torch.sqrt(v / (1 - 0.999**2)) + 1e-8)
    torch.testing.assert_close(carried["w"], expected)


def test_partition_routes_groups_and_keeps_unrouted_parameters() -> None:
    params, support, _ = problem()
    route = route_by_pattern({"arch.*": "architecture", "head.*": "weights", "*": None})
    rule = Partition({"architecture": adam(0.1, (0.0, 0.999)), "weights": sgd(0.5)}, route)
    names = list(params)
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = dict(
        zip(names, torch.autograd.grad(support(leaves), [leaves[n] for n in names]), strict=True)
    )
    new, state = rule.step(params, grads, rule.init(params), step=0)
    torch.testing.assert_close(
        new["head.weight"], params["head.weight"] - 0.5 * grads["head.weight"]
    )
    assert torch.equal(new["body.weight"], params["body.weight"])  # routed to None
    expected, _ = adam(0.1, (0.0, 0.999)).update(
        {"arch.alpha": grads["arch.alpha"]},
        adam(0.1).init({"arch.alpha": params["arch.alpha"]}),
        params,
        step=0,
    )
    torch.testing.assert_close(new["arch.alpha"], params["arch.alpha"] + expected["arch.alpha"])
    assert state["architecture"]["0"]["count"] == 1
    with pytest.raises(KeyError, match="no route for parameter 'x'"):
        Partition({"a": sgd(1.0)}, route_by_pattern({"y": "a"})).init({"x": torch.zeros(1)})
    with pytest.raises(KeyError, match="routed to group 'b', which has no rule"):
        Partition({"a": sgd(1.0)}, route_by_pattern({"*": "b"})).init({"x": torch.zeros(1)})


def test_on_steps_switches_a_rule_off_and_keeps_its_state() -> None:
    params = {"w": torch.ones(2)}
    grads = {"w": torch.ones(2)}
    rule = OnSteps(adam(0.1), range(1, 3))  # a one-step warm-up, then two active steps
    state = rule.init(params)
    updates, state = rule.update(grads, state, params, step=0)
    assert updates == {} and state["0"]["count"] == 0
    updates, state = rule.update(grads, state, params, step=1)
    assert state["0"]["count"] == 1 and updates["w"].abs().sum() > 0
    first_half = OnSteps(sgd(1.0), lambda step: step < 2)
    assert first_half.update(grads, {}, params, step=2)[0] == {}


def test_clip_by_global_norm() -> None:
    rule = Chain(ClipByGlobalNorm(1.0), Scale(-1.0))
    grads = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    updates, _ = rule.update(grads, rule.init(grads), grads, step=0)
    torch.testing.assert_close(updates["a"], torch.tensor([-0.6]))
    torch.testing.assert_close(updates["b"], torch.tensor([-0.8]))
    small = {"a": torch.tensor([0.3])}
    torch.testing.assert_close(
        rule.update(small, rule.init(small), small, step=0)[0]["a"], -small["a"]
    )


def test_learned_rates_shapes_and_state_dict() -> None:
    params, _, _ = problem()
    element = LearnedRate(params, 0.1, "element")
    per_step = LearnedRate(params, 0.1, "tensor_step", steps=3)
    assert element.rates["body__weight"].shape == (4, 3)
    assert per_step.rates["body__weight"].shape == (3,)
    assert set(per_step.state_dict()) == {
        f"rates.{k}" for k in ("body__weight", "head__weight", "arch__alpha")
    }
    # Later steps than trained reuse the last rate.
    with torch.no_grad():
        per_step.rates["head__weight"][2] = 0.7
    assert float(per_step.rate("head.weight", 5).detach()) == pytest.approx(0.7)


def rules(params: Params) -> dict[str, InnerOptimizer]:
    """One of every rule and combinator, each with a non-trivial setting."""
    arch = route_by_pattern({"arch.*": "architecture", "*": "weights"})
    return {
        "sgd": sgd(0.3),
        "meta_sgd": LearnedRate(params, 0.2, "element"),
        "per_tensor": LearnedRate(params, 0.2, "tensor"),
        "maml++": LearnedRate(params, 0.2, "tensor_step", steps=3),
        "adam": adam(0.05),
        "adam-beta1-0": adam(0.05, (0.0, 0.999)),
        "clip-sgd": Chain(ClipByGlobalNorm(0.5), Scale(-0.3)),
        "partition": Partition(
            {"architecture": adam(0.05, (0.0, 0.999)), "weights": LearnedRate(params, 0.2)},
            arch,
        ),
        "on-steps": Partition(
            {
                "architecture": OnSteps(sgd(0.3), range(1)),
                "weights": OnSteps(sgd(0.3), range(1, 3)),
            },
            arch,
        ),
    }


@pytest.mark.parametrize("name", list(rules(problem()[0])))
def test_second_order_gradients_match_finite_differences(name: str) -> None:
    """d query(adapt(params)) / d params, and / d learned rates, against gradcheck."""
    params, support, query = problem()
    rule = rules(params)[name]
    names = list(params)
    hyper_names = [n for n, _ in rule.named_parameters()]

    def meta_loss(*tensors: Tensor) -> Tensor:
        p = dict(zip(names, tensors[: len(names)], strict=True))
        hyper = dict(zip(hyper_names, tensors[len(names) :], strict=True))
        return query(adapt(rule, p, support, steps=3, hyper=hyper))

    inputs = [params[n].clone().requires_grad_() for n in names]
    inputs += [p.detach().clone().requires_grad_() for _, p in rule.named_parameters()]
    assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_second_order_through_adam_is_finite_for_zero_gradients() -> None:
    params = {
        "used": torch.randn(3, requires_grad=True),
        "unused": torch.randn(2, requires_grad=True),
    }

    def support(p: Params) -> Tensor:
        return (p["used"] ** 2).sum() + 0.0 * p["unused"].sum()

    adapted = adapt(adam(0.1), params, support, steps=2)
    loss = (adapted["used"] ** 3).sum() + adapted["unused"].sum()
    grads = torch.autograd.grad(loss, [params["used"], params["unused"]])
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_hyper_leaves_collect_the_rate_gradients() -> None:
    params, support, query = problem()
    params = {n: p.requires_grad_() for n, p in params.items()}
    rule = LearnedRate(params, 0.2, "element")
    leaves = {n: p.detach().clone().requires_grad_() for n, p in rule.named_parameters()}
    query(adapt(rule, params, support, steps=2, hyper=leaves)).backward()
    assert all(p.grad is None for p in rule.parameters())
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves.values())


def test_task_stacked_parameters() -> None:
    """Rules work on (T, *shape) task-stacked tensors: the same as task by task."""
    params = {"w": torch.randn(3, 2)}
    rule = LearnedRate(params, 0.2, "element")
    stacked = {"w": torch.randn(4, 3, 2)}
    grads = {"w": torch.randn(4, 3, 2)}
    together, _ = rule.step(stacked, grads, {}, step=0)
    for t in range(4):
        alone, _ = rule.step({"w": stacked["w"][t]}, {"w": grads["w"][t]}, {}, step=0)
        torch.testing.assert_close(together["w"][t], alone["w"])
    state = ScaleByAdam().init(stacked)
    assert state["m"]["w"].shape == (4, 3, 2)


def test_registry_builds_every_rule_the_same_way() -> None:
    params, _, _ = problem()
    for name in INNER_OPTIMIZERS.names():
        rule = INNER_OPTIMIZERS.get(name)(params, 0.1, steps=2)
        assert isinstance(rule, InnerOptimizer)
        new, _ = rule.step(
            params, {n: torch.ones_like(p) for n, p in params.items()}, rule.init(params), step=0
        )
        assert set(new) == set(params)
    assert (
        apply_updates({"a": torch.ones(1), "b": torch.ones(1)}, {"a": torch.ones(1)})["b"].item()
        == 1.0
    )


class ArchitectureNet(torch.nn.Module):
    """A tiny classifier with one architecture parameter (mixing two candidate layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(4, 3)
        self.alpha = torch.nn.Parameter(torch.zeros(2))

    def parameter_group(self, name: str) -> str:
        return "architecture" if name == "alpha" else "weights"

    def forward(self, x: Tensor) -> Tensor:
        mix = torch.softmax(self.alpha, 0)
        out: Tensor = mix[0] * self.a(x.flatten(1)) + mix[1] * self.b(x.flatten(1))
        return out


def test_maml_gives_each_parameter_group_its_inner_optimizer() -> None:
    from metarch.meta import MAML
    from metarch.models.groups import model_parameter_groups

    model = ArchitectureNet()
    assert model_parameter_groups(model) == {
        "weights": ["a.weight", "a.bias", "b.weight", "b.bias"],
        "architecture": ["alpha"],
    }
    learner = MAML(
        model,
        inner_lr=0.1,
        steps=2,
        inner_optimizer={"weights": "sgd", "architecture": {"name": "adam", "lr": 0.03}},
        batching="loop",
    )
    assert isinstance(learner.inner_optimizer, Partition)
    support_x, support_y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    new, _ = learner.inner_optimizer.step(
        params, grads, learner.inner_optimizer.init(params), step=0
    )
    torch.testing.assert_close(new["a.weight"], params["a.weight"] - 0.1)  # SGD, rate 0.1
    torch.testing.assert_close(new["alpha"], params["alpha"] - 0.03, rtol=0, atol=1e-6)  # Adam
    groups = learner.parameter_groups()
    assert [len(groups[g]) for g in ("weights", "architecture")] == [4, 1]
    predict = learner.adapt(support_x, support_y)
    assert predict(support_x).shape == (6, 3)
    with pytest.raises(ValueError, match="no rule for parameter group"):
        MAML(ArchitectureNet(), inner_optimizer={"weights": "sgd"})
    with pytest.raises(ValueError, match="lr_mode and inner_optimizer both"):
        MAML(ArchitectureNet(), inner_optimizer="adam", lr_mode="per_parameter")


def test_adam_state_is_found_and_replaced_through_any_nesting() -> None:
    # Reptile carries the second moments of whatever Adam a rule holds: here one per
    # parameter group, each switched on for alternate steps.
    rule = Partition(
        {
            "weights": OnSteps(adam(0.1, (0.0, 0.999)), lambda step: step % 2 == 1),
            "architecture": OnSteps(adam(0.2, (0.0, 0.999)), lambda step: step % 2 == 0),
        },
        route_by_pattern({"arch*": "architecture", "*": "weights"}),
    )
    params = {"arch": torch.zeros(2, dtype=F64), "w": torch.zeros(3, dtype=F64)}
    state = rule.init(params)
    assert set(adam_second_moments(state)) == {"arch", "w"}
    carried = {"arch": torch.full((2,), 4.0, dtype=F64), "w": torch.full((3,), 9.0, dtype=F64)}
    state = with_adam_second_moments(state, carried, counts=7)
    moments = adam_second_moments(state)
    assert all(torch.equal(moments[name], carried[name]) for name in carried)
    grads = {"arch": torch.ones(2, dtype=F64), "w": torch.ones(3, dtype=F64)}
    updates, state = rule.update(grads, state, params, step=0)  # the architecture's step
    assert set(updates) == {"arch"}
    v = 0.999 * 4.0 + 0.001 * 1.0
    expected = -0.2 * 1.0 / ((v / (1 - 0.999**8)) ** 0.5 + 1e-8)
    torch.testing.assert_close(updates["arch"], torch.full((2,), expected, dtype=F64))
    assert torch.equal(adam_second_moments(state)["w"], carried["w"])  # untouched this step
