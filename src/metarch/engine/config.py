"""Training configuration: YAML files validated by pydantic, overridable from the CLI.

A config names everything a run depends on. Unknown keys, wrong types and impossible
combinations are errors that name the key (``method.options.inner_lr: ...``), raised as
:class:`~metarch.errors.ConfigError`. ``--set key=value`` overrides any key by its dotted
path; values are parsed as YAML scalars (``--set steps=20 --set method.options.first_order=true``).

The options of a method and of a backbone are checked against the signature of the class or
factory registered under that name, so a config can never pass an argument the code does
not take, and ranges declared there (``inner_lr: PositiveFloat``) are checked too. What a
run builds from takes the *validated* values (``inner_lr: 1e-3`` arrives as a float), and
numbers are read as YAML 1.2 reads them: ``1e-3`` is a float, not PyYAML's string.
``metarch config keys`` lists every key with its type, default and help.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

import metarch.nas  # noqa: F401  (registers MetaNAS and the search spaces' backbones)
from metarch.errors import ConfigError
from metarch.meta.base import META_LEARNERS
from metarch.models.registry import MODELS
from metarch.registry import Registry, UnknownNameError, options_of

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "EpisodeConfig",
    "GroupSettings",
    "MethodConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "ValidationConfig",
    "apply_overrides",
    "load_config",
    "parse_yaml",
    "section_model",
    "validated_options",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(_Strict):
    """Random affine distortion of meta-training images (:mod:`metarch.data.augment`).

    Attributes:
        rotation: Largest rotation, in degrees.
        shear: Largest horizontal shear factor.
        scale: Largest relative change of scale along each axis.
        translate: Largest shift along each axis, as a fraction of the image side.
        flip: Mirror half of the images left to right (natural images).
        padding: Pixels from outside the image: ``zeros``, ``border`` or ``reflection``.
    """

    rotation: float = Field(10.0, ge=0, le=180)
    shear: float = Field(0.1, ge=0, le=1)
    scale: float = Field(0.1, ge=0, le=0.9)
    translate: float = Field(0.08, ge=0, le=0.5)
    flip: bool = False
    padding: Literal["zeros", "border", "reflection"] = "zeros"


class DataConfig(_Strict):
    """Where episodes come from.

    Attributes:
        root: Data root (default: ``--data-root``, ``METARCH_DATA``, ...).
        train_set: Class pool for meta-training (``--set`` syntax: ``background:train``, a
            set name, or a split file).
        val_set: Class pool for validation (held-out classes), or ``null`` for none: a final
            model trained on every class (``background:train+val``) after its settings were
            chosen on a validation run; such a run keeps only its ``last`` checkpoint.
        image_size: Side of the decoded images.
        rotations: Add 90/180/270-degree rotations of the training classes as classes.
        augment: Distort every meta-training image at random (``{}`` for the defaults;
            absent or ``null``: no distortion). Validation and evaluation never distort.
        normalize: Normalise every channel by the mean and standard deviation of the
            training classes' images (recorded with the run and applied at evaluation).
    """

    root: str | None = None
    train_set: str = "background:train"
    val_set: str | None = "background:val"
    image_size: int = Field(28, ge=8, le=512)
    rotations: bool = True
    augment: AugmentConfig | None = None
    normalize: bool = False


class EpisodeConfig(_Strict):
    """Shape of the episodes of one phase.

    Attributes:
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        within_alphabet: Draw the classes of an episode from one alphabet.
    """

    ways: int = Field(5, ge=2)
    shots: int = Field(1, ge=1)
    queries: int = Field(15, ge=1)
    within_alphabet: bool = False


class _Registered(_Strict):
    """A registered component by ``name`` and its ``options``, checked against its signature."""

    _key: ClassVar[str]
    _registry: ClassVar[Registry[Any]]
    _skip: ClassVar[int]

    @field_validator("name", check_fields=False)
    @classmethod
    def _registered(cls, name: str) -> str:
        return _registered_name(f"{cls._key}.name", cls._registry, name)

    @field_validator("options", check_fields=False)
    @classmethod
    def _validated(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" not in info.data:
            return options  # an unknown name: its own error says so
        target = cls._registry.get(info.data["name"])
        return validated_options(f"{cls._key}.options", target, options, skip=cls._skip)


class MethodConfig(_Registered):
    """The meta-learner and its options (checked against its constructor).

    Attributes:
        name: Registered meta-learner (``maml``, ``reptile``, ``protonet``, ...).
        options: Keyword arguments of its constructor (``metarch config keys --method NAME``
            lists them).
    """

    _key: ClassVar[str] = "method"
    _registry: ClassVar[Registry[Any]] = META_LEARNERS
    _skip: ClassVar[int] = 1  # the model the constructor takes first

    name: str = "protonet"
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Registered):
    """The backbone and its options (checked against its factory).

    Attributes:
        name: Registered backbone name.
        options: Keyword arguments of its factory (``metarch config keys --model NAME``
            lists them).
        channels_last: Keep convolution weights in channels-last (NHWC) memory, which
            oneDNN runs faster on CPUs (about 1.4x for Conv-4 training on 2 cores); the
            numbers computed are the same up to float rounding.
        init: Start the backbone from another run's trained one: its run directory (its
            ``best`` checkpoint) or a checkpoint's sidecar (``last.json``). The backbones
            must be the same; the classifier head and everything else start afresh. Read
            when a run starts, never on resume or evaluation.
    """

    _key: ClassVar[str] = "model"
    _registry: ClassVar[Registry[Any]] = MODELS
    _skip: ClassVar[int] = 0

    name: str = "conv4"
    options: dict[str, Any] = Field(default_factory=dict)
    channels_last: bool = False
    init: str | None = None


def _registered_name(key: str, registry: Registry[Any], name: str) -> str:
    try:
        registry.get(name)
    except UnknownNameError as exc:
        raise ValueError(f"{key}: {exc}") from None
    return name


class GroupSettings(_Strict):
    """Outer-optimizer settings of one parameter group; unset keys take the global ones.

    Attributes:
        lr: The group's learning rate (default: ``optimizer.lr``).
        weight_decay: The group's L2 penalty (default: ``optimizer.weight_decay``).
        schedule: The group's schedule (default: ``optimizer.schedule``).
        lr_decay_every: The group's ``lr_decay_every`` (default: the optimizer's).
        lr_decay: The group's ``lr_decay`` (default: the optimizer's).
        lr_final: The group's ``lr_final`` (default: the optimizer's).
    """

    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    schedule: Literal["step", "linear", "cosine"] | None = None
    lr_decay_every: int | None = Field(None, ge=0)
    lr_decay: float | None = Field(None, gt=0, le=1)
    lr_final: float | None = Field(None, ge=0)


class OptimizerConfig(_Strict):
    """Outer (meta) optimizer and its learning-rate schedule.

    Attributes:
        name: ``adam`` or ``sgd``.
        lr: Learning rate (at step 0).
        weight_decay: L2 penalty.
        schedule: How the rate changes over the run's ``steps``: ``step`` (multiply by
            ``lr_decay`` every ``lr_decay_every`` steps), ``linear`` (from ``lr`` to
            ``lr_final``, as Reptile anneals its meta step size) or ``cosine`` (half a
            cosine from ``lr`` to ``lr_final``).
        lr_decay_every: With ``step``: decay every this many steps (0: never).
        lr_decay: With ``step``: factor of each decay.
        lr_final: With ``linear`` or ``cosine``: the rate the last step would reach.
        grad_clip: Clip the meta-gradient norm to this value (0: no clipping).
        groups: Settings of some parameter groups (``weights``, ``architecture``,
            ``inner_optimizer``; see ``MetaLearner.parameter_groups``) that differ from the
            ones above, e.g. ``{inner_optimizer: {lr: 0.0001}}``.
    """

    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["step", "linear", "cosine"] = "step"
    lr_decay_every: int = Field(0, ge=0)
    lr_decay: float = Field(0.5, gt=0, le=1)
    lr_final: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.0, ge=0)
    groups: dict[str, GroupSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_groups(self) -> OptimizerConfig:
        for name in self.groups:
            try:
                self.for_group(name)
            except ValueError as exc:
                message = str(exc).replace("optimizer.", f"optimizer.groups.{name}.")
                raise ValueError(message) from None
        return self

    def for_group(self, name: str | None) -> OptimizerConfig:
        """The settings of parameter group ``name``: the global ones with its overrides."""
        if name is None or name not in self.groups:
            return self
        overrides = self.groups[name].model_dump(exclude_none=True)
        merged = {**self.model_dump(exclude={"groups"}), **overrides}
        try:
            return OptimizerConfig.model_validate(merged)
        except ValidationError as exc:
            message = _format_errors(exc, prefix=f"optimizer.groups.{name}", model=OptimizerConfig)
            raise ValueError(message) from None

    @model_validator(mode="after")
    def _check_schedule(self) -> OptimizerConfig:
        if self.schedule != "step" and self.lr_decay_every:
            raise ValueError(
                f"optimizer.lr_decay_every: only the 'step' schedule decays in steps, not "
                f"{self.schedule!r} (drop lr_decay_every or set schedule: step)"
            )
        if self.lr_final > self.lr:
            raise ValueError(
                f"optimizer.lr_final: {self.lr_final} is above optimizer.lr {self.lr}; "
                "schedules only lower the rate"
            )
        return self

    def learning_rate(self, step: int, total: int) -> float:
        """The rate of meta-training step ``step`` (0-based) of a run of ``total`` steps.

        A pure function of the step, so a resumed run needs no scheduler state.
        """
        if self.schedule == "step":
            if self.lr_decay_every == 0:
                return self.lr
            return self.lr * self.lr_decay ** (step // self.lr_decay_every)
        done = min(step / max(total, 1), 1.0)
        if self.schedule == "linear":
            return self.lr + (self.lr_final - self.lr) * done
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * done))


class ValidationConfig(_Strict):
    """Periodic validation on held-out classes.

    Attributes:
        every: Validate every this many steps (0: only at the end).
        episodes: Episodes per validation.
        episode: Shape of validation episodes (default: the training shape).
        seed: Seed of the validation episode stream (fixed, so validations are comparable).
    """

    every: int = Field(500, ge=0)
    episodes: int = Field(200, ge=1)
    episode: EpisodeConfig | None = None
    seed: int = Field(10_000, ge=0)


class BudgetConfig(_Strict):
    """Compute a run may spend: it stops at the first step that reaches a limit.

    Comparisons at equal meta-training compute (an ablation given the CPU time of the run
    it is compared with) set ``cpu_seconds``. Time is summed over resumes and, under
    ``--nproc``, over processes; the learning-rate schedule still spans ``steps``. The
    step that reaches the budget is validated and saved as the run's final checkpoint;
    resuming with a larger (or no) budget continues the run exactly as if it had not
    stopped.

    Attributes:
        cpu_seconds: Processor time of the training processes (all their threads).
        wall_seconds: Elapsed time while training.
    """

    cpu_seconds: float | None = Field(None, gt=0)
    wall_seconds: float | None = Field(None, gt=0)


class TrainConfig(_Strict):
    """Everything a training run depends on.

    Attributes:
        seed: Seed of the model initialisation and of the training episode stream.
        steps: Meta-training steps.
        meta_batch: Episodes per meta-training step.
        method: Meta-learner.
        model: Backbone.
        data: Data sources.
        episodes: Shape of meta-training episodes.
        optimizer: Outer optimizer.
        validation: Validation schedule.
        budget: Compute limits that stop the run before ``steps``.
        checkpoint_every: Save the ``last`` checkpoint every this many steps.
        log_every: Write a metrics line every this many steps.
    """

    seed: int = Field(0, ge=0)
    steps: int = Field(1000, ge=1)
    meta_batch: int = Field(1, ge=1)
    method: MethodConfig = MethodConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    episodes: EpisodeConfig = EpisodeConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    validation: ValidationConfig = ValidationConfig()
    budget: BudgetConfig = BudgetConfig()
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)

    @property
    def validation_episode(self) -> EpisodeConfig:
        """Shape of validation episodes."""
        return self.validation.episode or self.episodes


def validated_options(
    where: str, target: Callable[..., Any], options: Mapping[str, Any], *, skip: int
) -> dict[str, Any]:
    """``options`` validated against the keyword parameters of ``target``, as they are typed.

    Returns the options given (no defaults added), each as its annotation converts it
    (``"1e-3"`` to ``0.001`` for a ``float``): the values ``target`` is then called with.

    Raises:
        ValueError: Naming ``where.KEY`` for every unknown, mistyped or out-of-range option.
    """
    fixed = getattr(target, "fixed_options", {})
    clash = sorted(k for k in options if k in fixed and options[k] != fixed[k])
    if clash:
        raise ValueError(
            "; ".join(
                f"{where}.{key}: {getattr(target, 'registered_name', target)} fixes it to "
                f"{fixed[key]!r} (use 'maml' to choose it)"
                for key in clash
            )
        )
    fields: dict[str, Any] = {}
    for option in options_of(target, skip=skip):
        default = ... if option.required else option.default
        fields[option.name] = (option.annotation, default)
    model = create_model(
        f"{where}", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        validated = model(**{k: v for k, v in options.items() if k not in fixed})
    except ValidationError as exc:
        raise ValueError(_format_errors(exc, prefix=where, model=model)) from None
    return {key: options[key] if key in fixed else getattr(validated, key) for key in options}


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds (``X`` or ``X | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _keys_at(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The keys of the section at ``path`` of ``model`` (none if it is not a section)."""
    annotation: Any = model
    for part in path:
        if typing.get_origin(annotation) is dict:  # optimizer.groups.NAME
            annotation = typing.get_args(annotation)[1]
            continue
        section = section_model(annotation)
        if section is None or part not in section.model_fields:
            return []
        annotation = section.model_fields[str(part)].annotation
    section = None if typing.get_origin(annotation) is dict else section_model(annotation)
    return list(section.model_fields) if section else []


# pydantic's range errors -> (the bound's name in the error context, how a user writes it)
_RANGES = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}
# pydantic's number errors, in plain words.
_NUMBERS = {
    "int_from_float": "must be a whole number",
    "int_parsing": "must be an integer",
    "float_parsing": "must be a number",
}


def _format_errors(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One ``key.path: what is wrong`` per error; ``model`` (the validated one) suggests keys."""
    messages = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        key = f"{prefix}.{path}" if prefix and path else (prefix or path)
        kind = error["type"]
        context = error.get("ctx", {})
        if kind == "value_error":
            # Our own validators already name the key in their message.
            messages.append(str(context.get("error", error["msg"])))
            continue
        if kind == "extra_forbidden":
            text = "unknown key"
            known = _keys_at(model, error["loc"][:-1]) if model is not None else []
            close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            if close:
                text += f" (did you mean {close[0]!r}?)"
        elif kind in _RANGES:
            bound, symbol = _RANGES[kind]
            text = f"must be {symbol} {_number(context[bound])}, got {error['input']!r}"
        elif kind in _NUMBERS:
            text = f"{_NUMBERS[kind]}, got {error['input']!r}"
        else:
            text = error["msg"]
        messages.append(f"{key}: {text}")
    return "; ".join(messages)


def _number(value: Any) -> Any:
    """A bound as a user would write it (``0``, not pydantic's ``0.0`` for a float field)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats: ``1e-3``, ``1E-3``, ``+1e-3``, ``2e5``.

    YAML 1.1, which PyYAML follows, only knows exponents with a dot and a sign
    (``1.0e-3``); the forms people write became strings.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str) -> Any:
    """A YAML document or scalar, numbers read as YAML 1.2 reads them."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: builds no objects


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a config mapping."""
    result = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {override!r}")
        value = _override_value(key, raw)
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _override_value(key: str, raw: str) -> Any:
    """A ``--set`` value: YAML, or the text itself where it is plain text YAML rejects.

    Architecture strings such as ``|nor_conv_3x3~0|+...`` start with a YAML block-scalar
    indicator; taken as text they need no quoting. A value that opens a list or mapping
    (``[``, ``{``) must parse, so a typo there is an error, in one line.
    """
    if not raw:
        return ""
    try:
        return parse_yaml(raw)
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] not in ("[", "{", '"', "'"):
            return raw
        mark = getattr(exc, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set {key}: cannot parse {raw!r}{where}: {problem}") from None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read, override and validate a training config.

    Args:
        path: YAML file, or ``None`` for the built-in defaults.
        overrides: ``key.path=value`` strings applied before validation.

    Raises:
        ConfigError: Naming the file and every offending key.
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            loaded = parse_yaml(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path} ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_format_errors(exc, model=TrainConfig)}") from None


def dump_config(config: TrainConfig) -> str:
    """The config as YAML (what a run directory stores as ``config.yaml``)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what PyYAML's (multi-line) error is, on one line."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return f" ({' '.join(str(error).split())})"
    mark = error.problem_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(part for part in (error.context, error.problem) if part)
    return f"{where}: {what}" if what else where
