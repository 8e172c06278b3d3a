"""Evaluate a trained run: accuracy over episodes with a 95% CI, or Lake's one-shot runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarch.data.episodes import EpisodeSampler
from metarch.data.lake import LakeResult, evaluate_lake_runs, load_lake_runs
from metarch.data.resolve import load_pool
from metarch.engine.build import ModelInputs, build_learner
from metarch.engine.checkpoint import CheckpointError, load_checkpoint
from metarch.engine.config import TrainConfig, load_config
from metarch.errors import ConfigError
from metarch.meta.base import MetaLearner
from metarch.meta.test_time import TestTimeAugmentation, adapt_task_with

__all__ = [
    "EvaluationResult",
    "TrainedModel",
    "evaluate_episodes",
    "evaluate_lake",
    "evaluate_learner",
    "load_trained_learner",
]


def _shape(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class EvaluationResult:
    """Mean accuracy over episodes with its 95% confidence interval.

    Attributes:
        accuracy: Mean query accuracy, in percent.
        ci95: Half-width of the 95% confidence interval of the mean, in percent.
        episodes: Number of episodes.
    """

    accuracy: float
    ci95: float
    episodes: int

    def to_json(self) -> dict[str, Any]:
        """``{"accuracy": ..., "ci95": ..., "episodes": ...}``."""
        return {"accuracy": self.accuracy, "ci95": self.ci95, "episodes": self.episodes}


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
    """
    was_training = learner.training
    learner.eval()
    accuracies = []
    try:
        done = 0
        for start in range(0, episodes, batch):
            indices = list(range(start, min(start + batch, episodes)))
            accuracies.append(learner.evaluate(sampler.tasks(indices), augmentation))
            done += len(indices)
            if progress is not None:
                progress(done, episodes)
    finally:
        learner.train(was_training)
    values = torch.cat(accuracies).double() * 100.0
    std = float(values.std(unbiased=True)) if len(values) > 1 else 0.0
    return EvaluationResult(
        accuracy=float(values.mean()),
        ci95=1.96 * std / math.sqrt(len(values)),
        episodes=len(values),
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


def load_trained_learner(run_dir: Path, checkpoint: str = "best") -> TrainedModel:
    """The learner of a run, with the weights of checkpoint ``best``, ``last`` or a path.

    ``best`` falls back to ``last`` for runs that never validated. The model is built for
    the input shape the checkpoint records (runs saved before it was recorded: 1 channel).
    """
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); pass --run RUN_DIR")
    config = load_config(config_file)
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
    try:
        learner.load_state_dict(state.model_state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: the weights do not fit the model its config describes ({exc})"
        ) from None
    learner.eval()
    return TrainedModel(learner, config, inputs, path, state.step)


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
) -> EvaluationResult:
    """Mean query accuracy (percent, with 95% CI) over ``episodes`` episodes of a pool.

    ``augmentation`` adds test-time augmentation (:class:`TestTimeAugmentation`);
    ``inputs`` (the trained model's) checks the images' shape and normalises them.
    """
    pool = load_pool(pool_spec, data_root, image_size=image_size)
    normalization = None
    if inputs is not None:
        if pool.dataset.image_shape != inputs.shape:
            raise ConfigError(
                f"--set {pool_spec}: its images are {_shape(pool.dataset.image_shape)}, but "
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
