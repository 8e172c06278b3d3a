from __future__ import annotations

import itertools
import math

import pytest

from metarch.engine.config import OptimizerConfig, load_config
from metarch.errors import ConfigError


def test_step_schedule_decays_every_interval() -> None:
    settings = OptimizerConfig(lr=1.0, lr_decay_every=10, lr_decay=0.5)
    assert [settings.learning_rate(s, 100) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert OptimizerConfig(lr=0.3).learning_rate(1000, 10) == 0.3


def test_linear_schedule_anneals_to_the_final_rate() -> None:
    # Reptile's meta step size: 1.0 at the first step, falling linearly towards 0.
    settings = OptimizerConfig(name="sgd", lr=1.0, schedule="linear")
    assert [settings.learning_rate(s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    ending = OptimizerConfig(lr=1.0, schedule="linear", lr_final=0.2)
    assert ending.learning_rate(50, 100) == pytest.approx(0.6)
    assert ending.learning_rate(100, 100) == pytest.approx(0.2)


def test_cosine_schedule_follows_half_a_cosine() -> None:
    settings = OptimizerConfig(lr=1.0, schedule="cosine", lr_final=0.1)
    assert settings.learning_rate(0, 10) == pytest.approx(1.0)
    assert settings.learning_rate(5, 10) == pytest.approx(0.55)
    assert settings.learning_rate(10, 10) == pytest.approx(0.1)
    rates = [settings.learning_rate(s, 10) for s in range(11)]
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert math.isclose(rates[2], 0.1 + 0.45 * (1 + math.cos(0.2 * math.pi)))


def test_schedule_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"optimizer.lr_decay_every: only the 'step' schedule"):
        load_config(None, ["optimizer.schedule=linear", "optimizer.lr_decay_every=100"])
    with pytest.raises(ConfigError, match=r"optimizer.lr_final: 0.5 is above optimizer.lr"):
        load_config(
            None, ["optimizer.schedule=cosine", "optimizer.lr=0.1", "optimizer.lr_final=0.5"]
        )
    with pytest.raises(ConfigError, match=r"optimizer.schedule: Input should be"):
        load_config(None, ["optimizer.schedule=exponential"])


def test_distributed_backend_follows_the_tensors_not_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from metarch.engine import distributed

    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    # A machine with a GPU still trains on the CPU here: gloo.
    chosen: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend: chosen.append(backend)
    )
    distributed._initialise_from_environment()
    assert chosen == ["gloo"]


def test_parameter_groups_take_their_own_outer_settings() -> None:
    from metarch.engine.config import load_config

    config = load_config(
        None,
        [
            "optimizer.lr=0.001",
            "optimizer.schedule=cosine",
            "optimizer.groups={inner_optimizer: {lr: 0.0001, weight_decay: 0.1}}",
        ],
    )
    group = config.optimizer.for_group("inner_optimizer")
    assert (group.lr, group.weight_decay, group.schedule) == (0.0001, 0.1, "cosine")
    assert config.optimizer.for_group("weights") is config.optimizer
    assert group.learning_rate(50, 100) == pytest.approx(0.00005)
    with pytest.raises(ConfigError, match=r"optimizer.groups.weights.lr_final: 0.1 is above"):
        load_config(None, ["optimizer.groups={weights: {lr_final: 0.1}}"])
    with pytest.raises(ConfigError, match=r"optimizer.groups.weights.rate: unknown key"):
        load_config(None, ["optimizer.groups={weights: {rate: 0.1}}"])
