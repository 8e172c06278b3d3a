from __future__ import annotations

import pytest
import torch

from metarch.meta import ANIL, FOMAML, MAML, META_LEARNERS, MetaSGD, create_meta_learner
from metarch.meta.functional import adapt_task, run_task
from metarch.models.norm import NormPolicy
from tests.meta.helpers import flat_grad, make_batch, tiny_classifier

POLICIES = [p.value for p in NormPolicy]


def meta_loss(learner: MAML, batch_index_params: dict[str, torch.Tensor] | None = None) -> float:
    """The meta-objective (mean query loss after adaptation), without side effects."""
    batch = make_batch(tasks=2)
    params = {n: p.detach() for n, p in learner.model.named_parameters()}
    if batch_index_params:
        params.update(batch_index_params)
    buffers = dict(learner.model.named_buffers())
    total = 0.0
    for t in range(batch.num_tasks):
        loss, _, _ = run_task(
            learner.model,
            params,
            buffers,
            batch.support_images[t],
            batch.support_labels[t],
            batch.query_images[t],
            batch.query_labels[t],
            adapt=learner.adapt_names,
            optimizer=learner.inner_optimizer,
            config=learner.config,
            training=True,
        )
        total += float(loss.detach())
    return total / batch.num_tasks


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(policy: str, steps: int) -> None:
    model = tiny_classifier(steps=steps, per_step_norm=policy == "per_step")
    learner = MAML(model, inner_lr=0.3, steps=steps, norm_policy=policy, batching="loop")
    with torch.no_grad():  # non-trivial running statistics for the frozen policy
        for buffer in model.buffers():
            buffer.add_(torch.rand_like(buffer) * 0.1)
    # Running statistics must not move between the gradient and the finite differences.
    saved = [b.clone() for b in model.buffers()]
    learner.compute_meta_gradients(make_batch(tasks=2))
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.copy_(value)
    generator = torch.Generator().manual_seed(0)
    eps = 1e-6
    # First and last convolution, a batch-norm scale and shift, and the head.
    checked = {
        "backbone.blocks.0.0.weight",
        "backbone.blocks.1.1.weight",
        "backbone.blocks.2.1.bias",
        "backbone.blocks.3.0.weight",
        "head.weight",
        "head.bias",
    }
    for name, parameter in model.named_parameters():
        if name not in checked:
            continue
        assert parameter.grad is not None
        index = tuple(int(torch.randint(s, (1,), generator=generator)) for s in parameter.shape)
        bumped = {}
        for sign in (1.0, -1.0):
            value = parameter.detach().clone()
            value[index] += sign * eps
            bumped[sign] = meta_loss(learner, {name: value})
        numeric = (bumped[1.0] - bumped[-1.0]) / (2 * eps)
        analytic = float(parameter.grad[index])
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


@pytest.mark.parametrize(
    ("policy", "options"),
    [(policy, {"steps": steps}) for policy in POLICIES for steps in (1, 3)]
    + [
        ("per_step", {"steps": 2, "multi_step_loss": True}),
        ("batch", {"steps": 2, "lr_mode": "per_layer_step"}),
        ("frozen", {"steps": 1, "lr_mode": "per_parameter"}),
        ("batch", {"steps": 2, "adapt": "head"}),
    ],
)
def test_vmap_and_loop_give_the_same_second_order_meta_gradient(
    policy: str, options: dict[str, object]
) -> None:
    steps = int(options["steps"])  # type: ignore[call-overload]
    grads = {}
    buffers = {}
    for batching in ("loop", "vmap"):
        model = tiny_classifier(steps=steps, per_step_norm=policy == "per_step")
        learner = MAML(model, inner_lr=0.3, norm_policy=policy, batching=batching, **options)  # type: ignore[arg-type]
        learner.compute_meta_gradients(make_batch())
        assert learner.batching == batching  # no silent fallback
        grads[batching] = flat_grad(list(learner.parameters()))
        buffers[batching] = torch.cat([b.flatten() for b in model.buffers()])
    assert torch.allclose(grads["loop"], grads["vmap"], rtol=1e-9, atol=1e-12)
    assert torch.allclose(buffers["loop"], buffers["vmap"], rtol=1e-9, atol=1e-12)


def test_first_order_equals_second_order_only_when_inner_lr_is_zero() -> None:
    def gradient(learner_class: type[MAML], inner_lr: float) -> torch.Tensor:
        learner = learner_class(tiny_classifier(steps=2), inner_lr=inner_lr, steps=2)
        learner.compute_meta_gradients(make_batch())
        return flat_grad(list(learner.parameters()))

    assert torch.allclose(gradient(MAML, 0.0), gradient(FOMAML, 0.0), rtol=0, atol=1e-14)
    second, first = gradient(MAML, 0.3), gradient(FOMAML, 0.3)
    assert (second - first).abs().max() > 1e-4 * second.abs().max()


def test_anil_never_changes_the_body_in_the_inner_loop() -> None:
    model = tiny_classifier(steps=3)
    learner = ANIL(model, inner_lr=0.5, steps=3)
    assert learner.adapt_names == ["head.weight", "head.bias"]
    batch = make_batch()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    trajectory = adapt_task(
        model,
        params,
        dict(model.named_buffers()),
        batch.support_images[0],
        batch.support_labels[0],
        adapt=learner.adapt_names,
        optimizer=learner.inner_optimizer,
        config=learner.config,
        training=True,
    ).trajectory
    for step_params in trajectory[1:]:
        for name, value in step_params.items():
            if name.startswith("head."):
                assert not torch.equal(value, params[name])
            else:
                assert value is params[name]  # the very same tensor: untouched
    # The body is still meta-learned: it receives a meta-gradient.
    learner.compute_meta_gradients(batch)
    first_conv = dict(model.named_parameters())["backbone.blocks.0.0.weight"]
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_meta_sgd_learns_a_rate_per_parameter_element() -> None:
    model = tiny_classifier()
    learner = MetaSGD(model, inner_lr=0.1)
    rates = dict(learner.inner_optimizer.named_parameters())
    assert rates["rates.head__weight"].shape == model.head.weight.shape
    learner.compute_meta_gradients(make_batch())
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in rates.values())


def test_per_layer_step_rates_get_gradients_for_every_step() -> None:
    learner = MAML(tiny_classifier(steps=3), steps=3, lr_mode="per_layer_step")
    learner.compute_meta_gradients(make_batch())
    rate = dict(learner.inner_optimizer.named_parameters())["rates.head__weight"]
    assert rate.shape == (3,)
    assert rate.grad is not None and torch.all(rate.grad != 0)


def test_state_dicts_saved_before_inner_optimizers_load() -> None:
    learner = MetaSGD(tiny_classifier(), inner_lr=0.1)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    old = {
        k.replace("inner_optimizer.rates.", "rates.rates."): v.clone() + 1.0
        if k.startswith("inner_optimizer.")
        else v
        for k, v in state.items()
    }
    learner.load_state_dict(old)
    rate = dict(learner.inner_optimizer.named_parameters())["rates.head__weight"]
    torch.testing.assert_close(rate.detach(), state["inner_optimizer.rates.head__weight"] + 1.0)


def test_meta_training_improves_query_accuracy() -> None:
    learner = MAML(tiny_classifier(steps=1), inner_lr=0.4, steps=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    batch = make_batch(tasks=4)
    before = learner.evaluate(batch).mean()
    first = learner.meta_train_step(batch, optimizer).loss
    for _ in range(15):
        last = learner.meta_train_step(batch, optimizer).loss
    assert last < first
    assert learner.evaluate(batch).mean() >= before


@pytest.mark.parametrize("policy", POLICIES)
def test_adapt_returns_a_query_predictor(policy: str) -> None:
    model = tiny_classifier(steps=2, per_step_norm=policy == "per_step")
    learner = MAML(model, steps=2, eval_steps=4, norm_policy=policy)
    learner.eval()
    batch = make_batch()
    before = [p.detach().clone() for p in model.parameters()]
    predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
    logits = predictor(batch.query_images[0])
    assert logits.shape == (9, 3) and not logits.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Non-transductive policies predict each query independently of the others.
    single = predictor(batch.query_images[0][:1])
    if policy != "batch":
        assert torch.allclose(single, logits[:1])


def test_registry_names() -> None:
    assert {"maml", "fomaml", "metasgd", "anil"} <= set(META_LEARNERS.names())
    learner = create_meta_learner("fomaml", tiny_classifier())
    assert isinstance(learner, FOMAML) and learner.config.first_order
    with pytest.raises(ValueError, match="no such parameters"):
        MAML(tiny_classifier(), adapt=["nope"])


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [("fomaml", "first_order", False), ("anil", "adapt", "all"), ("metasgd", "lr_mode", "fixed")],
)
def test_variants_refuse_options_that_make_them_another_method(
    name: str, option: str, value: object
) -> None:
    from metarch.engine.config import load_config
    from metarch.errors import ConfigError

    variant = META_LEARNERS.get(name)
    with pytest.raises(TypeError, match=f"{name} fixes {option}="):
        variant(tiny_classifier(), **{option: value})
    fixed = variant.fixed_options[option]
    variant(tiny_classifier(), **{option: fixed})  # the fixed value itself is accepted
    with pytest.raises(ConfigError, match=f"method.options.{option}: {name} fixes it to"):
        load_config(None, [f"method.name={name}", f"method.options.{option}={value}"])
    assert option not in {o.name for o in META_LEARNERS.options(name, skip=1)}
    assert variant.registered_name == name
