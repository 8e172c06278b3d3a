"""MetaNAS as a meta-learner: first-order DARTS in the inner loop, the temperature schedule,
warm-up, pruning, drop-path, the meta-update of both groups, and what adaptation reports."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metarch.engine.evaluate import check_state_fits, optional_state
from metarch.meta import Reptile
from metarch.meta.base import ArchitecturePredictor
from metarch.meta.functional import InnerLoopConfig, adapt_task
from metarch.models.context import current_context
from metarch.models.norm import NormPolicy
from metarch.nas import create_space
from metarch.nas.methods.metanas import ArchitectureSchedule, MetaNAS, _scheduled
from metarch.nas.ops import FEW_SHOT_OPERATIONS
from metarch.nas.spaces.base import SearchSpace
from metarch.nas.spaces.metanas import Genotype
from metarch.nas.spaces.metanas_search import MetaNASSearchNetwork, input_pairs
from tests.meta.helpers import flat_grad, make_batch
from tests.nas.relaxation_checks import operations_run

OPS = len(FEW_SHOT_OPERATIONS)
GENOTYPE = (
    "normal:conv_3x3~0,sep_conv_3x3~1|avg_pool_3x3~0,dil_conv_3x3~2|skip_connect~1,conv_1x5_5x1~3;"
    "reduce:max_pool_3x3~0,conv_3x3~1|conv_3x3~1,sep_conv_3x3~2|dil_conv_3x3~0,skip_connect~2"
)


def relaxation(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    space = create_space("metanas", channels=4, image_size=12)
    return space.relax(num_classes=3, **options).double()


def learner_of(model: torch.nn.Module, **options: object) -> MetaNAS:
    settings: dict[str, object] = {
        "steps": 2,
        "eval_steps": 4,
        "eval_architecture_steps": 2,
        "inner_batch_size": 4,
        "eval_batch_size": 4,
        "skip_below": 0.0,
        "eval_skip_below": 0.0,
        "prune_every": 0,
        "inner_optimizer": {
            "weights": {"name": "adam", "lr": 0.01, "betas": [0.0, 0.999]},
            "architecture": {"name": "adam", "lr": 0.05, "betas": [0.0, 0.999]},
        },
    }
    settings.update(options)
    return MetaNAS(model, **settings)  # type: ignore[arg-type]


def architecture_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".alpha_" in n or ".beta_" in n]


def _grad(model: torch.nn.Module, name: str) -> torch.Tensor:
    grad = model.get_parameter(name).grad
    assert grad is not None, name
    return grad


def learnable_architecture(model: torch.nn.Module) -> set[str]:
    # The first node has one input pair: its weight is always 1, its logit never moves.
    return {
        n for n in architecture_names(model) if not n.endswith(("beta_normal.0", "beta_reduce.0"))
    }


def test_the_temperature_anneals_linearly_over_the_architecture_steps() -> None:
    schedule = ArchitectureSchedule(architecture_steps=5, t_max=1.0, t_min=0.1)
    # Mini-batch k is steps 2k (architecture) and 2k + 1 (weights); queries are step 2S.
    assert [schedule.temperature(2 * k) for k in range(5)] == pytest.approx(
        [1.0, 0.775, 0.55, 0.325, 0.1]
    )
    assert [schedule.temperature(2 * k + 1) for k in range(5)] == pytest.approx(
        [1.0, 0.775, 0.55, 0.325, 0.1]
    )
    assert schedule.temperature(10) == pytest.approx(0.1)  # the query pass
    assert [schedule.architecture_active(s) for s in range(12)] == [True, False] * 5 + [False] * 2
    warm_up = ArchitectureSchedule(architecture_steps=0, t_max=1.0, t_min=0.1)
    assert {warm_up.temperature(s) for s in range(11)} == {1.0}
    assert not any(warm_up.architecture_active(s) for s in range(10))
    # Meta-testing: 100 mini-batches, the architecture adapts in the first 50.
    test = ArchitectureSchedule(architecture_steps=50, t_max=1.0, t_min=0.05)
    assert test.temperature(2 * 49) == pytest.approx(0.05) and test.temperature(200) == 0.05
    assert sum(test.architecture_active(s) for s in range(200)) == 50


def test_the_network_reads_each_steps_temperature_in_the_inner_loop() -> None:
    model = relaxation()
    learner = learner_of(model, steps=3, batching="loop")
    seen: list[tuple[str, int, float]] = []

    def record(module: torch.nn.Module, args: object) -> None:
        context = current_context()
        seen.append((context.phase, context.step, context.current_temperature))

    model.get_submodule("backbone").register_forward_pre_hook(record)
    learner.compute_meta_gradients(make_batch(tasks=1, ways=3, shots=4))
    temperatures = [1.0, 0.525, 0.05]
    support = [(step, t) for phase, step, t in seen if phase == "support"]
    assert [step for step, _ in support] == list(range(6))
    assert [t for _, t in support] == pytest.approx([temperatures[s // 2] for s in range(6)])
    query = [(step, t) for phase, step, t in seen if phase == "query"]
    assert [step for step, _ in query] == [6] and [t for _, t in query] == pytest.approx([0.05])


def test_the_architecture_gradient_is_taken_on_the_live_network() -> None:
    # With plain gradient descent on both groups, the architecture step of mini-batch 1
    # moves alpha by -lr times the gradient of the support loss at the weights *after*
    # the weight step of mini-batch 0 (the reference took it on a copy of the network
    # frozen at start-up). Check that gradient against finite differences.
    model = relaxation(init_scale=0.5)
    lr = 0.1
    learner = learner_of(
        model,
        inner_optimizer={
            "weights": {"name": "sgd", "lr": 0.5},
            "architecture": {"name": "sgd", "lr": lr},
        },
    )
    batch = make_batch(tasks=1, ways=3, shots=2)
    x, y = batch.support_images[0], batch.support_labels[0]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    config = InnerLoopConfig(steps=3, first_order=True, norm_policy=NormPolicy.BATCH)
    with _scheduled(ArchitectureSchedule(2, 1.0, 0.5)):
        adaptation = adapt_task(
            model,
            params,
            buffers,
            x,
            y,
            adapt=learner.learner.adapt_names,
            optimizer=learner.learner.inner_optimizer,
            config=config,
            training=True,
        )
    before, after = adaptation.trajectory[2], adaptation.trajectory[3]
    names = architecture_names(model)
    weights_moved = [n for n in params if n not in names and not torch.equal(before[n], params[n])]
    assert weights_moved, "the weight step of mini-batch 0 moved the weights"
    assert all(torch.equal(after[n], before[n]) for n in params if n not in names)
    step_gradient = torch.cat([((before[n] - after[n]) / lr).reshape(-1) for n in names])

    def loss_at(values: dict[str, torch.Tensor]) -> float:
        with _scheduled(ArchitectureSchedule(2, 1.0, 0.5)):
            from metarch.models.context import forward_context

            with forward_context(step=2, phase="support"):
                logits = torch.func.functional_call(model, {**before, **values, **buffers}, (x,))
        return float(torch.nn.functional.cross_entropy(logits, y))

    eps = 1e-7
    numeric = []
    for name in names:
        flat = before[name].reshape(-1)
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            numeric.append(
                (
                    loss_at({name: plus.view_as(before[name])})
                    - loss_at({name: minus.view_as(before[name])})
                )
                / (2 * eps)
            )
    torch.testing.assert_close(
        step_gradient, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-8
    )
    assert step_gradient.abs().sum() > 0


@pytest.mark.parametrize("meta_learner", ["reptile", "fomaml", "maml"])
def test_the_meta_update_moves_weights_and_architecture(meta_learner: str) -> None:
    model = relaxation(init_scale=0.5)
    learner = learner_of(model, meta_learner=meta_learner)
    groups = learner.parameter_groups()
    optimizer = torch.optim.SGD(
        [{"params": groups["weights"], "lr": 1.0}, {"params": groups["architecture"], "lr": 0.6}]
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner.meta_train_step(make_batch(tasks=2, ways=3, shots=4), optimizer)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    architecture = learnable_architecture(model)
    assert architecture <= changed
    assert changed - architecture, "weights moved too"
    assert int(learner.get_buffer("meta_iterations")) == 1


def test_reptile_moves_the_architecture_towards_the_adapted_ones() -> None:
    # Exactly theta + epsilon (mean_t theta_t - theta), with epsilon 0.6 for the architecture.
    model = relaxation(init_scale=0.5)
    learner = learner_of(model, adam_state="per_task")
    batch = make_batch(tasks=2, ways=3, shots=4)
    torch.manual_seed(3)
    learner.compute_meta_gradients(batch)
    differences = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(
        [
            {"params": learner.parameter_groups()["weights"], "lr": 1.0},
            {"params": learner.parameter_groups()["architecture"], "lr": 0.6},
        ]
    )
    torch.manual_seed(3)
    learner.get_buffer("meta_iterations").zero_()
    learner.meta_train_step(batch, optimizer)
    for name, p in model.named_parameters():
        if name in differences:
            rate = 0.6 if name in architecture_names(model) else 1.0
            torch.testing.assert_close(p.detach(), before[name] - rate * differences[name])


def test_the_architecture_does_not_adapt_during_the_warm_up() -> None:
    model = relaxation(init_scale=0.5)
    learner = learner_of(model, warmup_iterations=1)
    learner.compute_meta_gradients(make_batch(tasks=2, ways=3, shots=4))
    architecture = architecture_names(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(not _grad(model, n).any() for n in architecture)
    assert any(_grad(model, n).any() for n in grads if n not in architecture)
    for p in model.parameters():
        p.grad = None
    learner.compute_meta_gradients(make_batch(tasks=2, ways=3, shots=4))
    assert all(_grad(model, n).any() for n in learnable_architecture(model))


def test_task_batched_metanas_equals_the_loop() -> None:
    grads, moments = [], []
    for batching in ("loop", "batched"):
        model = relaxation(init_scale=0.5, skip_below=0.0)
        learner = learner_of(model, batching=batching, skip_below=0.13)
        torch.manual_seed(0)
        learner.compute_meta_gradients(make_batch(tasks=3, ways=3, shots=4))
        assert learner.learner.batching == batching
        grads.append(flat_grad([p for p in model.parameters() if p.requires_grad]))
        moments.append(learner.learner.get_buffer("inner_adam_step").clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-10)
    assert torch.equal(moments[0], moments[1])
    assert grads[0].abs().sum() > 0


def carried_counts(learner: MetaNAS) -> dict[str, int]:
    """The carried inner Adam step count of each parameter."""
    assert isinstance(learner.learner, Reptile)
    steps = learner.learner.get_buffer("inner_adam_step").tolist()
    return dict(zip(learner.learner._carried_names, steps, strict=True))


def test_architecture_adams_count_their_own_steps() -> None:
    # After a warm-up iteration the weights' Adam took 2 steps, the architecture's none:
    # each must start the next task with its own count (bias correction).
    model = relaxation()
    learner = learner_of(model, warmup_iterations=1)
    learner.compute_meta_gradients(make_batch(tasks=2, ways=3, shots=4))
    counts = carried_counts(learner)
    architecture = set(architecture_names(model))
    assert {counts[n] for n in counts if n in architecture} == {0}
    assert {counts[n] for n in counts if n not in architecture} == {2}
    learner.compute_meta_gradients(make_batch(tasks=2, ways=3, shots=4))
    counts = carried_counts(learner)
    assert {counts[n] for n in counts if n in architecture} == {2}
    assert {counts[n] for n in counts if n not in architecture} == {4}


def test_pruning_keeps_a_valid_distribution() -> None:
    network = MetaNASSearchNetwork(channels=4).double()
    with torch.no_grad():
        alpha = network.get_parameter("alpha_normal.1")
        alpha.copy_(torch.linspace(-20, 20, alpha.numel()).view_as(alpha))
    kept_before = network.kept_operations()
    removed = network.prune(0.01, temperature=1.0)
    assert removed > 0 and network.kept_operations() == kept_before - removed
    logits = network._logits("normal", 1, network.get_parameter("alpha_normal.1"))
    weights = torch.softmax(logits, -1)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, dtype=torch.float64))
    assert (weights == 0).any() and (weights > 0).sum(-1).min() >= 1
    # A threshold above 1/7 still leaves the strongest operation of every edge.
    network.prune(0.9, temperature=1.0)
    for kind in ("normal", "reduce"):
        for node in range(3):
            assert (getattr(network, f"kept_{kind}_{node}").sum(-1) == 1).all()
    # Pruned operations get no gradient and never come back.
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    network(x).sum().backward()
    grad = network.get_parameter("alpha_normal.1").grad
    assert grad is not None and not grad[~network.get_buffer("kept_normal_1")].any()


def test_pruning_is_scheduled_and_saved_with_the_run() -> None:
    model = relaxation(init_scale=3.0)
    learner = learner_of(model, prune_every=2, prune_below=0.05, temperature=(1.0, 0.2))
    network = model.backbone
    assert isinstance(network, MetaNASSearchNetwork)
    total = network.kept_operations()
    learner.compute_meta_gradients(make_batch(tasks=1, ways=3, shots=4))
    learner.compute_meta_gradients(make_batch(tasks=1, ways=3, shots=4))
    assert network.kept_operations() == total  # pruned before the third iteration
    learner.compute_meta_gradients(make_batch(tasks=1, ways=3, shots=4))
    assert network.kept_operations() < total
    state = learner.state_dict()
    assert int(state["meta_iterations"]) == 3 and "learner.model.backbone.kept_normal_0" in state
    fresh = learner_of(relaxation())
    fresh.load_state_dict(state)
    backbone = fresh.model.get_submodule("backbone")
    assert isinstance(backbone, MetaNASSearchNetwork)
    assert backbone.kept_operations() == network.kept_operations()


def discrete_network_of(
    supernet: torch.nn.Module, space: SearchSpace[Genotype], genotype: Genotype
) -> torch.nn.Module:
    """``genotype``'s discrete network with the supernet's weights of its operations."""
    discrete = space.build(genotype).double()
    weights = dict(supernet.state_dict())
    mapped = {}
    for name in discrete.state_dict():
        parts = name.split(".")
        if parts[0] == "cells" and parts[2] == "edges":
            cell, node, edge = int(parts[1]), int(parts[3]), int(parts[4])
            kind = "reduce" if cell in (1, 3) else "normal"
            op, source = getattr(genotype, kind)[node][edge]
            source_name = ".".join(
                [*parts[:4], str(source), str(FEW_SHOT_OPERATIONS.index(op)), *parts[5:]]
            )
            if source_name in weights:
                mapped[name] = weights[source_name]
        elif name in weights:
            mapped[name] = weights[name]
    missing = discrete.load_state_dict(mapped, strict=False).missing_keys
    # Only the affine parameters of the discrete network's batch norms (1 and 0 at start).
    assert all(name.endswith((".weight", ".bias")) for name in missing)
    return discrete


def test_the_genotype_of_the_supernet_with_one_hot_weights_is_its_discrete_network() -> None:
    space = create_space("metanas", channels=4, image_size=12)
    genotype = space.decode(GENOTYPE)
    torch.manual_seed(0)
    supernet = space.relax().double()
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            for node, edges in enumerate(getattr(genotype, kind)):
                beta = supernet.get_parameter(f"beta_{kind}.{node}")
                beta.fill_(-1e4)[input_pairs(node).index(tuple(s for _, s in edges))] = 1e4
                alpha = supernet.get_parameter(f"alpha_{kind}.{node}")
                alpha.fill_(-1e4)
                for op, source in edges:
                    alpha[source, FEW_SHOT_OPERATIONS.index(op)] = 1e4
    discrete = discrete_network_of(supernet, space, genotype)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(supernet(x), discrete(x), rtol=1e-10, atol=1e-12)
    assert space.derive(supernet) == genotype


def test_a_relaxation_restricted_to_a_genotype_is_its_discrete_network() -> None:
    """The fixed-architecture ablation: whatever the architecture weights, only the genotype
    runs; its weights get no gradient from what it excludes; the masks load into old runs."""
    space = create_space("metanas", channels=4, image_size=12)
    genotype = space.decode(GENOTYPE)
    torch.manual_seed(0)
    supernet = MetaNASSearchNetwork(channels=4, genotype=GENOTYPE, init_scale=1.0).double()
    discrete = discrete_network_of(supernet, space, genotype)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(supernet(x), discrete(x), rtol=1e-10, atol=1e-12)
    assert supernet.genotype() == genotype
    supernet(x).square().sum().backward()
    for kind in ("normal", "reduce"):
        for node in range(len(getattr(genotype, kind))):
            beta = supernet.get_parameter(f"beta_{kind}.{node}")
            alpha = supernet.get_parameter(f"alpha_{kind}.{node}")
            assert beta.grad is not None and alpha.grad is not None
            assert not beta.grad.any() and not alpha.grad.any()  # softmax of one logit
    # Only the genotype's operations run (the mixed operations' other children never do).
    calls = operations_run(supernet, 5, x)
    assert len(calls) == len(supernet.cells) * 2 * 3
    # Runs saved before pairs could be restricted load with every pair kept.
    state = {k: v for k, v in supernet.state_dict().items() if "kept_pairs" not in k}
    whole = MetaNASSearchNetwork(channels=4).double()
    # Evaluation's check of a checkpoint against its config accepts the missing masks.
    check_state_fits(
        whole.state_dict(), state, Path("c.json"), Path("c.yaml"), optional_state(whole)
    )
    whole.load_state_dict(state)
    assert all(bool(b.all()) for n, b in whole.named_buffers() if "kept_pairs" in n)


def test_drop_path_drops_only_in_support_passes_of_training() -> None:
    network = MetaNASSearchNetwork(channels=4, drop_path=0.5).double()
    x = torch.rand(6, 1, 12, 12, dtype=torch.float64)
    from metarch.models.context import forward_context

    with torch.no_grad():
        plain = network(x)
        torch.manual_seed(0)
        with forward_context(phase="support"):
            dropped = network(x)
        network.eval()
        with forward_context(phase="support"):
            evaluated = network(x)
    assert not torch.allclose(plain, dropped)
    # Eval mode normalises with running statistics: compare against a pass without drop-path.
    network.drop_path = 0.0
    with torch.no_grad(), forward_context(phase="support"):
        torch.testing.assert_close(evaluated, network(x))


def test_adaptation_names_the_adapted_architecture() -> None:
    model = relaxation(init_scale=0.5)
    learner = learner_of(model)
    learner.eval()
    batch = make_batch(tasks=1, ways=3, shots=4)
    predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
    assert isinstance(predictor, ArchitecturePredictor)
    space = learner.space()
    assert space.encode(space.decode(predictor.architecture)) == predictor.architecture
    logits = predictor(batch.query_images[0])
    assert logits.shape == (9, 3) and torch.isfinite(logits).all()
    architectures: list[str] = []
    accuracy = learner.evaluate(make_batch(tasks=2, ways=3, shots=4), architectures=architectures)
    assert len(architectures) == 2 and accuracy.shape == (2,)
    assert not any(p.grad is not None for p in model.parameters())
    assert math.isfinite(float(accuracy.mean()))


def test_bad_models_and_options_are_refused() -> None:
    from metarch.models.registry import FewShotClassifier, create_model

    with pytest.raises(ValueError, match="continuous relaxation"):
        MetaNAS(FewShotClassifier(create_model("conv4"), 3, (1, 28, 28)))
    with pytest.raises(ValueError, match="eval_architecture_steps"):
        learner_of(relaxation(), eval_steps=4, eval_architecture_steps=5)
    with pytest.raises(ValueError, match="meta_learner"):
        learner_of(relaxation(), meta_learner="protonet")


def test_adaptation_is_transductive_by_default_and_never_drops_paths() -> None:
    # The reference evaluates with batch statistics (its batch norm is never in eval mode)
    # and without drop-path: eval and train mode adapt alike, as a model without drop-path.
    batch = make_batch(tasks=1, ways=3, shots=4)
    logits = []
    for mode, drop_path in (("eval", 0.5), ("train", 0.5), ("eval", 0.0)):
        model = relaxation(init_scale=0.5, drop_path=drop_path)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        learner = learner_of(model, batching="loop")
        learner.train(mode == "train")
        torch.manual_seed(0)  # the same mini-batches
        predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
        with torch.no_grad():
            logits.append(predictor(batch.query_images[0]))
        assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
        assert model.get_submodule("backbone").drop_path == drop_path  # restored
    torch.testing.assert_close(logits[0], logits[1])
    torch.testing.assert_close(logits[0], logits[2])
    running = learner_of(relaxation(init_scale=0.5), transductive=False, batching="loop")
    running.eval()
    torch.manual_seed(0)
    predictor = running.adapt(batch.support_images[0], batch.support_labels[0])
    with torch.no_grad():
        assert not torch.allclose(predictor(batch.query_images[0]), logits[0])
