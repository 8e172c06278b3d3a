from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from metarch.engine.config import (
    OptimizerConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_yaml,
)
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


# --------------------------------------------------------------- values as people write them


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 0.001),
        ("1E-3", 0.001),
        ("+1e-3", 0.001),
        ("-1e-3", -0.001),
        (".5", 0.5),
        ("2e5", 200000.0),
        ("1.0e3", 1000.0),
        ("1.0e-3", 0.001),
        ("10", 10),
        ("1e", "1e"),
        ("e5", "e5"),
        ("1e-3x", "1e-3x"),
        ("'1e-3'", "1e-3"),
    ],
)
def test_numbers_are_read_as_yaml_1_2_reads_them(text: str, value: object) -> None:
    parsed = parse_yaml(text)
    assert parsed == value and type(parsed) is type(value)


def test_options_reach_the_learner_as_their_validated_types(tmp_path: Path) -> None:
    from metarch.engine.build import build_learner
    from metarch.meta import MAML, Reptile

    # Quoted, so YAML keeps strings: the config's types convert them all the same.
    maml = load_config(
        None,
        ["method.name=maml", "method.options={inner_lr: '1e-3', steps: '2', eval_steps: 1e1}"],
    )
    assert maml.method.options == {"inner_lr": 0.001, "steps": 2, "eval_steps": 10}
    assert type(maml.method.options["eval_steps"]) is int
    learner = build_learner(maml, (1, 28, 28))
    assert isinstance(learner, MAML) and learner.eval_config.steps == 10

    path = tmp_path / "reptile.yaml"
    path.write_text(
        "method: {name: reptile, options: {inner_lr: 1E-3, eps: '1e-8', betas: [0, .9]}}\n"
        "model: {name: conv4, options: {hidden: 8.0}}\n"
        "optimizer: {lr: +1e-3}\n"
    )
    reptile = load_config(path)
    assert reptile.method.options == {"inner_lr": 0.001, "eps": 1e-8, "betas": (0.0, 0.9)}
    assert reptile.model.options == {"hidden": 8} and reptile.optimizer.lr == 0.001
    learner = build_learner(reptile, (1, 28, 28))
    assert isinstance(learner, Reptile) and (learner.inner_lr, learner.eps) == (0.001, 1e-8)
    # What the run directory keeps is the validated config, and it reads back the same.
    assert load_config_text(tmp_path, dump_config(reptile)) == reptile


def load_config_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "again.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures import write_small_omniglot

    return write_small_omniglot(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_a_config_written_the_usual_way_trains(
    method: str, tmp_path: Path, data_root: Path
) -> None:
    from metarch.engine.trainer import Trainer

    path = tmp_path / "config.yaml"
    path.write_text(
        f"steps: 2\n"
        f"meta_batch: 2\n"
        f"method: {{name: {method}, options: {{inner_lr: 1e-3, steps: 1, eval_steps: 1}}}}\n"
        f"model: {{name: conv4, options: {{hidden: 8}}}}\n"
        f"data: {{train_set: background, val_set: evaluation}}\n"
        f"episodes: {{ways: 3, shots: 1, queries: 2}}\n"
        f"validation: {{every: 2, episodes: 2}}\n"
        f"optimizer: {{lr: 1e-3}}\n"
    )
    config = load_config(path)
    assert config.method.options["inner_lr"] == 0.001
    final = Trainer(config, tmp_path / "run", data_root=data_root).run()
    assert all(math.isfinite(value) for value in final.values())


# ------------------------------------------------------------------ ranges and unknown keys


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=-1", "must be >= 1, got -1"),
        ("steps=0", "must be >= 1, got 0"),
        ("steps=1.5", "must be a whole number, got 1.5"),
        ("meta_batch=0", "must be >= 1, got 0"),
        ("episodes.ways=1", "must be >= 2, got 1"),
        ("episodes.shots=0", "must be >= 1, got 0"),
        ("episodes.queries=0", "must be >= 1, got 0"),
        ("optimizer.lr=-1e-3", "must be > 0, got -0.001"),
        ("validation.every=-1", "must be >= 0, got -1"),
        ("checkpoint_every=0", "must be >= 1, got 0"),
        ("data.augment.rotation=200", "must be <= 180, got 200"),
    ],
)
def test_out_of_range_values_are_errors_naming_the_key(override: str, message: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=f"^defaults: {re.escape(f'{key}: {message}')}$"):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("choice", "option", "message"),
    [
        ("method.name=maml", "inner_lr=-0.1", "must be > 0, got -0.1"),
        ("method.name=maml", "steps=-1", "must be >= 0, got -1"),
        ("method.name=fomaml", "eval_steps=-2", "must be >= 0, got -2"),
        ("method.name=maml", "support_group=0", "must be >= 1, got 0"),
        ("method.name=maml", "task_threads=0", "must be >= 1, got 0"),
        ("method.name=maml", "lr_mode=per_step", "Input should be 'fixed', 'per_parameter' or"),
        ("method.name=reptile", "inner_lr=0", "must be > 0, got 0"),
        ("method.name=reptile", "eps=0", "must be > 0, got 0"),
        ("method.name=reptile", "betas=[0, 1]", "must be < 1, got 1"),
        ("method.name=reptile", "inner_batch_size=0", "must be >= 1, got 0"),
        ("method.name=reptile", "steps=2.5", "must be a whole number, got 2.5"),
        ("method.name=protonet", "cosine_scale=-1", "must be > 0, got -1"),
        ("model.name=conv4", "hidden=0", "must be >= 1, got 0"),
        ("model.name=resnet12", "widths=[64, 0, 1, 1]", "must be >= 1, got 0"),
    ],
)
def test_out_of_range_options_are_errors_naming_the_key(
    choice: str, option: str, message: str
) -> None:
    section = choice.partition(".")[0]
    name, _, value = option.partition("=")
    # An element of a list or tuple is named by its index: betas.1, widths.1.
    key = f"{section}.options.{name}" + (".1" if value.startswith("[") else "")
    with pytest.raises(ConfigError, match=f"^defaults: {re.escape(f'{key}: {message}')}"):
        load_config(None, [choice, f"{section}.options.{option}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=3", "stepz: unknown key (did you mean 'steps'?)"),
        ("data.imag_size=32", "data.imag_size: unknown key (did you mean 'image_size'?)"),
        ("optimizer.groups={weights: {lrr: 0.1}}", "unknown key (did you mean 'lr'?)"),
        ("method.options.distanse=cosine", "unknown key (did you mean 'distance'?)"),
        ("model.options.hiden=8", "model.options.hiden: unknown key (did you mean 'hidden'?)"),
        ("method.name=mamll", "method.name: unknown meta-learner 'mamll' (did you mean 'maml'?)"),
        ("model.name=conv5", "model.name: unknown backbone 'conv5' (did you mean 'conv4'?)"),
        ("colour=red", "colour: unknown key"),
    ],
)
def test_unknown_keys_are_errors_with_the_closest_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_options_a_constructor_rejects_together_are_config_errors(data_root: Path) -> None:
    from metarch.engine.build import build_learner

    config = load_config(
        None,
        [
            "method.name=reptile",
            "method.options={inner_optimizer: sgd, adam_state: sequential}",
        ],
    )
    with pytest.raises(ConfigError, match=r"^method.options: adam_state='sequential' needs"):
        build_learner(config, (1, 28, 28))


def test_set_takes_architecture_strings_as_text_and_names_broken_lists() -> None:
    text = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert apply_overrides({}, [f"model.options.genotype={text}"]) == {
        "model": {"options": {"genotype": text}}
    }
    assert apply_overrides({}, ["steps=20", "a.b=[1, 2]"]) == {"steps": 20, "a": {"b": [1, 2]}}
    with pytest.raises(ConfigError) as caught:
        apply_overrides({}, ["a.b=[1, 2"])
    message = str(caught.value)
    assert message.startswith("--set a.b: cannot parse '[1, 2' at column") and "\n" not in message
