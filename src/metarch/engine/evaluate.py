"""Evaluate a trained run: accuracy over episodes with a 95% CI, or Lake's one-shot runs."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metarch.data.episodes import EpisodeSampler
from metarch.data.lake import LakeResult, evaluate_lake_runs, load_lake_runs
from metarch.data.omniglot import OMNIGLOT_SETS
from metarch.data.pools import ClassPool
from metarch.data.resolve import load_pool
from metarch.engine.build import ModelInputs, build_learner
from metarch.engine.checkpoint import CheckpointError, load_checkpoint
from metarch.engine.config import TrainConfig, load_config
from metarch.errors import ConfigError, DataError, EpisodeError
from metarch.meta.base import MetaLearner
from metarch.meta.test_time import TestTimeAugmentation, adapt_task_with
from metarch.nas.methods.metanas import MetaNAS

__all__ = [
    "AdaptedArchitectures",
    "ArchitectureShare",
    "EvaluationResult",
    "TrainedModel",
    "check_state_fits",
    "evaluate_episodes",
    "evaluate_lake",
    "evaluate_learner",
    "load_trained_learner",
    "trained_classes_in",
]

log = logging.getLogger(__name__)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _finite(value: float) -> float | None:
    """``value``, or ``None`` (JSON ``null``) for NaN and infinities."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ArchitectureShare:
    """One architecture the tasks adapted to, how often, and what its network costs.

    Attributes:
        architecture: Its canonical string in the search space.
        tasks: Tasks that adapted to it.
        accuracy: Their mean query accuracy, in percent.
        parameters: Trainable parameters of its discrete network (with the head).
        flops: Its FLOPs per image.
        peak_activation_bytes: Its peak activation memory per image.
    """

    architecture: str
    tasks: int
    accuracy: float
    parameters: int
    flops: int
    peak_activation_bytes: int

    def to_json(self) -> dict[str, Any]:
        """Every field, by name."""
        return {
            "architecture": self.architecture,
            "tasks": self.tasks,
            "accuracy": _finite(self.accuracy),
            "parameters": self.parameters,
            "flops": self.flops,
            "peak_activation_bytes": self.peak_activation_bytes,
        }


@dataclass(frozen=True)
class AdaptedArchitectures:
    """The architectures the evaluated tasks adapted to (architecture-search learners).

    Attributes:
        space: The search space's registered name.
        distinct: How many different architectures the tasks chose.
        most_frequent: The most frequent ones, most frequent first.
        meta_architecture: The architecture the meta-parameters themselves choose.
    """

    space: str
    distinct: int
    most_frequent: tuple[ArchitectureShare, ...]
    meta_architecture: str

    def to_json(self) -> dict[str, Any]:
        """Every field, by name."""
        return {
            "space": self.space,
            "distinct": self.distinct,
            "most_frequent": [share.to_json() for share in self.most_frequent],
            "meta_architecture": self.meta_architecture,
        }


@dataclass(frozen=True)
class EvaluationResult:
    """Mean accuracy over episodes with its 95% confidence interval.

    Attributes:
        accuracy: Mean query accuracy, in percent.
        ci95: Half-width of the 95% confidence interval of the mean, in percent.
        episodes: Number of episodes.
        architectures: What the tasks adapted to, for learners that adapt architectures.
    """

    accuracy: float
    ci95: float
    episodes: int
    architectures: AdaptedArchitectures | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """``{"accuracy": ..., "ci95": ..., "episodes": ...}``; ``null`` for a non-number.

        With ``"architectures"`` for learners that adapt architectures.
        """
        result: dict[str, Any] = {
            "accuracy": _finite(self.accuracy),
            "ci95": _finite(self.ci95),
            "episodes": self.episodes,
        }
        if self.architectures is not None:
            result["architectures"] = self.architectures.to_json()
        return result


def summarize_architectures(
    learner: MetaLearner,
    architectures: Sequence[str],
    accuracies: torch.Tensor,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    top: int = 5,
) -> AdaptedArchitectures | None:
    """What the tasks adapted to: distinct count, the ``top`` most frequent with costs.

    ``None`` for learners that do not adapt architectures.
    """
    if not isinstance(learner, MetaNAS) or len(architectures) != len(accuracies):
        return None
    space = learner.space(input_shape)
    counts = Counter(architectures)
    shares = []
    for architecture, tasks in counts.most_common(top):
        chosen = [i for i, a in enumerate(architectures) if a == architecture]
        cost = space.cost(space.decode(architecture), num_classes=num_classes)
        shares.append(
            ArchitectureShare(
                architecture=architecture,
                tasks=tasks,
                accuracy=float(accuracies[chosen].double().mean() * 100.0),
                parameters=cost.parameters,
                flops=cost.flops,
                peak_activation_bytes=cost.peak_activation_bytes,
            )
        )
    return AdaptedArchitectures(
        space=space.registered_name,
        distinct=len(counts),
        most_frequent=tuple(shares),
        meta_architecture=learner.meta_architecture(),
    )


def evaluate_learner(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    batch: int = 16,
    progress: Callable[[int, int], None] | None = None,
    augmentation: TestTimeAugmentation | None = None,
) -> EvaluationResult:
    """Adapt to and score ``episodes`` episodes of ``sampler`` (the first of its stream).

    ``augmentation`` adds test-time augmentation (:class:`TestTimeAugmentation`).

    Raises:
        EpisodeError: If ``episodes`` is below 1 or the episodes have no queries (no
            accuracy to measure).
    """
    if episodes < 1:
        raise EpisodeError(f"evaluation needs at least 1 episode, got {episodes}")
    if sampler.queries < 1:
        raise EpisodeError(
            f"evaluation needs at least 1 query per class (accuracy is measured on queries), "
            f"got {sampler.queries}"
        )
    was_training = learner.training
    learner.eval()
    accuracies = []
    architectures: list[str] = []
    try:
        done = 0
        for start in range(0, episodes, batch):
            indices = list(range(start, min(start + batch, episodes)))
            tasks = sampler.tasks(indices)
            accuracies.append(learner.evaluate(tasks, augmentation, architectures))
            done += len(indices)
            if progress is not None:
                progress(done, episodes)
    finally:
        learner.train(was_training)
    per_task = torch.cat(accuracies)
    values = per_task.double() * 100.0
    std = float(values.std(unbiased=True)) if len(values) > 1 else 0.0
    summary = summarize_architectures(
        learner,
        architectures,
        per_task,
        input_shape=tuple(tasks.support_images.shape[-3:]),  # type: ignore[arg-type]
        num_classes=sampler.ways,
    )
    return EvaluationResult(
        accuracy=float(values.mean()),
        ci95=1.96 * std / math.sqrt(len(values)),
        episodes=len(values),
        architectures=summary,
    )


@dataclass(frozen=True)
class TrainedModel:
    """A run's learner, loaded for evaluation.

    Attributes:
        learner: The learner with the checkpoint's weights, in eval mode.
        config: The run's config.
        inputs: The image shape and normalisation the model was trained with.
        checkpoint: The sidecar the weights came from.
        step: Meta-training steps done at that checkpoint.
    """

    learner: MetaLearner
    config: TrainConfig
    inputs: ModelInputs
    checkpoint: Path
    step: int


#: The config keys evaluation may change: how a trained learner adapts at test time.
TEST_TIME_KEYS = "method.options.eval_"


def load_trained_learner(
    run_dir: Path, checkpoint: str = "best", overrides: Sequence[str] = ()
) -> TrainedModel:
    """The learner of a run, with the weights of checkpoint ``best``, ``last`` or a path.

    ``best`` falls back to ``last`` for runs that never validated. The model is built for
    the input shape the checkpoint records (runs saved before it was recorded: 1 channel).

    Args:
        run_dir: The run directory.
        checkpoint: ``best``, ``last`` or a checkpoint's sidecar.
        overrides: ``KEY=VALUE`` changes of test-time adaptation settings
            (``method.options.eval_*``, e.g. the reference's 15-image mini-batches at
            5 shots); anything else would change what was trained and is refused.
    """
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); pass --run RUN_DIR")
    for override in overrides:
        key = override.partition("=")[0]
        if not key.startswith(TEST_TIME_KEYS):
            raise ConfigError(
                f"--set {key}: evaluation may change only how the trained learner adapts "
                f"({TEST_TIME_KEYS}*, e.g. {TEST_TIME_KEYS}steps=50); {key} changes what "
                "was trained: train a run with it instead"
            )
    config = load_config(config_file, overrides)
    if checkpoint in ("best", "last"):
        path = run_dir / f"{checkpoint}.json"
        if checkpoint == "best" and not path.exists():
            path = run_dir / "last.json"
    else:
        path = Path(checkpoint)
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    inputs = ModelInputs.from_json(state.inputs, config)
    learner = build_learner(config, inputs.shape)
    check_state_fits(
        learner.state_dict(), state.model_state, path, config_file, optional_state(learner)
    )
    try:
        learner.load_state_dict(state.model_state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: the weights do not fit the model {config_file} describes ({exc})"
        ) from None
    learner.eval()
    return TrainedModel(learner, config, inputs, path, state.step)


def optional_state(model: torch.nn.Module) -> set[str]:
    """State a checkpoint may lack: the module fills it in when loading older checkpoints.

    A module declares such entries by their local names with ``optional_state()``.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "optional_state", None)
        if callable(declared):
            names.update(f"{prefix}.{name}" if prefix else name for name in declared())
    return names


def check_state_fits(
    model: Mapping[str, torch.Tensor],
    checkpoint: Mapping[str, torch.Tensor],
    path: Path,
    config_file: Path,
    optional: Collection[str] = (),
) -> None:
    """Refuse checkpoint tensors that do not fit the model a config builds, naming the first.

    ``optional`` names model state an older checkpoint may lack (see :func:`optional_state`).

    Raises:
        ConfigError: Naming the checkpoint, the first tensor that is missing, extra or of
            another shape (in the model's order), and how many more differ.
    """
    problems: list[str] = []
    for name, tensor in model.items():
        if name not in checkpoint and name in optional:
            continue
        if name not in checkpoint:
            problems.append(f"the model's tensor {name!r} ({_shape(tensor.shape)}) is missing")
        elif tuple(checkpoint[name].shape) != tuple(tensor.shape):
            problems.append(
                f"tensor {name!r} is {_shape(checkpoint[name].shape)} in the checkpoint but "
                f"{_shape(tensor.shape)} in the model"
            )
    problems += [
        f"it holds tensor {name!r} ({_shape(checkpoint[name].shape)}), which the model lacks"
        for name in checkpoint
        if name not in model
    ]
    if problems:
        more = f" ({len(problems) - 1} more tensors differ)" if len(problems) > 1 else ""
        raise ConfigError(
            f"checkpoint {path} does not match the model {config_file} builds: "
            f"{problems[0]}{more}; was the config edited after training, or is the checkpoint "
            "another run's?"
        )


def _set_names(spec: str) -> set[str]:
    """Data sets a ``--dataset`` value may draw classes from, judged from the value alone.

    Omniglot sets that share classes count as one another.
    """
    name = spec.split(":", 1)[0]
    if spec.endswith(".txt") or name == "omniglot":  # split files read background+evaluation
        return set(OMNIGLOT_SETS)
    if name.startswith("background"):  # the small sets are parts of the background set
        return {n for n in OMNIGLOT_SETS if n.startswith("background")}
    return {name}


def trained_classes_in(
    pool: ClassPool, pool_spec: str, train_set: str, data_root: Path, *, image_size: int
) -> list[str]:
    """Classes of ``pool`` that the training pool ``train_set`` (a ``--dataset`` value) also holds.

    ``pool_spec`` is the ``--dataset`` value ``pool`` was loaded from. Rotations aside: a class
    counts as trained if any rotation of it was. The training pool is only loaded when the
    two values can share a data set at all; if it cannot be loaded from ``data_root`` the
    answer is ``[]``.
    """
    if not _set_names(train_set) & _set_names(pool_spec):
        return []
    try:
        trained = load_pool(train_set, data_root, image_size=image_size)
    except DataError:
        return []

    def names(of: ClassPool) -> list[str]:
        # Omniglot sets name characters the same way; any other set's classes are its own.
        dataset = of.dataset.name
        space = "omniglot" if dataset in OMNIGLOT_SETS or dataset == "omniglot" else dataset
        labels = of.dataset.class_names
        return [f"{space}/{labels[c]}" for c in dict.fromkeys(of.classes.tolist())]

    seen = set(names(trained))
    return [name.split("/", 1)[1] for name in names(pool) if name in seen]


def evaluate_episodes(
    learner: MetaLearner,
    pool_spec: str,
    data_root: Path,
    *,
    image_size: int,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    within_alphabet: bool = False,
    seed: int = 0,
    augmentation: TestTimeAugmentation | None = None,
    inputs: ModelInputs | None = None,
    train_set: str | None = None,
) -> EvaluationResult:
    """Mean query accuracy (percent, with 95% CI) over ``episodes`` episodes of a pool.

    ``augmentation`` adds test-time augmentation (:class:`TestTimeAugmentation`);
    ``inputs`` (the trained model's) checks the images' shape and normalises them;
    ``train_set`` (the run's ``data.train_set``) logs a warning when the pool holds classes
    the model was trained on.
    """
    if episodes < 1:
        raise EpisodeError(f"evaluation needs at least 1 episode, got {episodes}")
    pool = load_pool(pool_spec, data_root, image_size=image_size)
    if train_set is not None:
        shared = trained_classes_in(pool, pool_spec, train_set, data_root, image_size=image_size)
        if shared:
            log.warning(
                "%s shares %d of its %d classes with the training set %r (e.g. %s): accuracy "
                "on trained classes overstates few-shot accuracy on new ones; evaluate on "
                "held-out classes (background:test for a run trained on background:train)",
                pool_spec,
                len(shared),
                len(set(pool.classes.tolist())),
                train_set,
                shared[0],
            )
    normalization = None
    if inputs is not None:
        if pool.dataset.image_shape != inputs.shape:
            raise ConfigError(
                f"--dataset {pool_spec}: its images are {_shape(pool.dataset.image_shape)}, but "
                f"the model was trained on {_shape(inputs.shape)} images"
            )
        normalization = inputs.normalization
    sampler = EpisodeSampler(
        pool,
        ways,
        shots,
        queries,
        seed=seed,
        within_group=within_alphabet,
        normalize=normalization,
    )
    return evaluate_learner(learner, sampler, episodes, augmentation=augmentation)


def evaluate_lake(
    learner: MetaLearner,
    data_root: Path,
    *,
    image_size: int,
    augmentation: TestTimeAugmentation | None = None,
    inputs: ModelInputs | None = None,
) -> LakeResult:
    """Error of ``learner`` on Lake's 20 within-alphabet one-shot runs.

    With ``augmentation``, run ``i`` (0-based) takes the distortions of task ``i``;
    ``inputs`` (the trained model's) normalises the images as training did.
    """
    runs = load_lake_runs(data_root, image_size=image_size)
    run_index = 0
    normalization = None if inputs is None else inputs.normalization

    def classify(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        nonlocal run_index
        if normalization is not None:
            support, query = normalization(support), normalization(query)
        predict = adapt_task_with(learner, support, labels, augmentation, run_index)
        run_index += 1
        with torch.no_grad():
            return predict(query)[:, : len(labels)].argmax(dim=1)

    return evaluate_lake_runs(runs, classify)
