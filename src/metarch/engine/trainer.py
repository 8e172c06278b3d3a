"""The meta-training loop: episodes in, checkpoints, metrics and validation out.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON
object per logged step and per validation), TensorBoard events under ``tensorboard/``, the
``last`` and ``best`` checkpoints (:mod:`metarch.engine.checkpoint`) and ``.lock``, which
keeps a second training out while one runs (:mod:`metarch.engine.rundir`).

A checkpoint is written only once its weights have given a finite loss: the state is
snapshotted when a checkpoint is due and written after the next step's loss checks out, so
a run stopped by a non-finite loss keeps a checkpoint it can be restarted from. Only the
final checkpoint, with no step after it, is written at once.

Resuming is exact: episodes are a pure function of ``(seed, step)``, and a checkpoint holds
everything else that changes during training (weights, buffers, optimizer state, RNG
states). A resumed run therefore ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarch.data.augment import AffineAugmentation
from metarch.data.episodes import EpisodeSampler
from metarch.data.normalize import ChannelNormalization
from metarch.data.paths import resolve_data_root
from metarch.data.pools import ClassPool
from metarch.data.resolve import load_pool
from metarch.engine.build import ModelInputs, build_learner
from metarch.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from metarch.engine.config import (
    AugmentConfig,
    BudgetConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from metarch.engine.distributed import (
    ProcessGroup,
    all_reduce_mean,
    average_buffers,
    average_gradients,
    current_group,
)
from metarch.engine.evaluate import EvaluationResult, evaluate_learner
from metarch.engine.rundir import RunLock
from metarch.errors import MetarchError
from metarch.utils.io import append_line, atomic_write_text, display_path

__all__ = ["Trainer", "TrainingError", "train_command"]

log = logging.getLogger(__name__)


class TrainingError(MetarchError):
    """Training cannot go on (a non-finite loss, a mismatched resume, ...)."""


def train_command(
    config_file: Path, out: Path, data_root: str | os.PathLike[str] | None, *options: str
) -> str:
    """The ``metarch train`` command line for a run, ready to paste into a shell."""
    words = ["metarch", "train", "--config", str(config_file), "--out", str(out), *options]
    if data_root is not None:
        words += ["--data-root", os.fspath(data_root)]
    return " ".join(shlex.quote(display_path(word)) for word in words)


@dataclass
class _PendingCheckpoint:
    """A checkpoint's state, taken when it was due, waiting for the next step's loss."""

    tags: list[str]
    step: int
    metrics: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any]


def _comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run's config must share with the saved one.

    The saved config is read through today's schema first, so keys added since it was
    written take their defaults (an old run resumes as long as its settings still mean the
    same). Only the run's length may change, and only under a ``step`` schedule (a
    ``linear`` or ``cosine`` rate depends on it), and its compute budget; validation
    settings are dropped when there is no validation set, since they then affect nothing.
    """
    try:
        normal = TrainConfig.model_validate(config).model_dump(mode="json")
    except ValueError:
        normal = dict(config)  # no longer valid: compared as saved, so the change is named
    normal.pop("budget", None)
    if normal.get("optimizer", {}).get("schedule", "step") == "step":
        normal.pop("steps", None)
    if normal.get("data", {}).get("val_set", "") is None:
        normal.pop("validation", None)
    return normal


class Trainer:
    """Meta-trains the learner a config describes, in a run directory.

    Args:
        config: The run's config.
        run_dir: Where the run writes (created if missing).
        resume: Continue from ``run_dir/last.json``.
        data_root: Data root (overrides ``config.data.root``).
        on_step: Called after every step with (step, metrics) — the CLI's progress bar.
        config_file: The file ``config`` was read from; if it is the run's own
            ``config.yaml``, it is left as the user wrote it.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        data_root: str | os.PathLike[str] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        config_file: Path | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.on_step = on_step
        self.config_file = config_file
        self.data_root = data_root
        self.group = current_group()
        _check_utf8(run_dir)
        if config.meta_batch % self.group.world_size:
            raise TrainingError(
                f"meta_batch {config.meta_batch} does not split evenly over "
                f"{self.group.world_size} processes; choose a multiple of {self.group.world_size}"
            )
        root = resolve_data_root(data_root if data_root is not None else config.data.root)
        self.train_pool = load_pool(
            config.data.train_set,
            root,
            image_size=config.data.image_size,
            rotations=config.data.rotations,
        )
        self.inputs = ModelInputs(
            self.train_pool.dataset.image_shape,
            ChannelNormalization.of_pool(self.train_pool) if config.data.normalize else None,
        )
        shape = config.episodes
        self.sampler = EpisodeSampler(
            self.train_pool,
            shape.ways,
            shape.shots,
            shape.queries,
            seed=config.seed,
            within_group=shape.within_alphabet,
            augment=_augmentation(config.data.augment),
            normalize=self.inputs.normalization,
        )
        self.val_sampler: EpisodeSampler | None = None
        if config.data.val_set is not None:
            val_pool = load_pool(config.data.val_set, root, image_size=config.data.image_size)
            _check_disjoint(self.train_pool, val_pool)
            val_shape = config.validation_episode
            self.val_sampler = EpisodeSampler(
                val_pool,
                val_shape.ways,
                val_shape.shots,
                val_shape.queries,
                seed=config.validation.seed,
                within_group=val_shape.within_alphabet,
                normalize=self.inputs.normalization,
            )
        self.learner = build_learner(config, self.inputs.shape, initialise=not resume)
        self.optimizer = self._make_optimizer()
        self.start_step = 0
        # The last step trained (by this process or, resumed, before it).
        self.step = 0
        # Compute spent before this process started (a resumed run's earlier legs).
        self.spent_before = ComputeSpent()
        # The budget limit that ended the run early, if one did.
        self.stopped_by: str | None = None
        self.best_accuracy = -1.0
        # The step of the newest checkpoint whose weights gave a finite loss.
        self.good_step: int | None = None
        # Only rank 0 writes, so only rank 0 keeps other trainings out.
        self._lock = RunLock(run_dir) if self.group.is_main else None
        try:
            if resume:
                self._resume()
            else:
                self._start_fresh()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let other trainings into the run directory (done by :meth:`run` when it ends)."""
        if self._lock is not None:
            self._lock.release()

    # -- setup -----------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        settings = self.config.optimizer
        if settings.groups:
            groups = self.learner.parameter_groups()
            unknown = sorted(set(settings.groups) - set(groups))
            if unknown:
                raise TrainingError(
                    f"optimizer.groups: this learner has no parameter group "
                    f"{', '.join(map(repr, unknown))}; its groups: {', '.join(groups)}"
                )
            param_groups: list[dict[str, Any]] = [
                {
                    "params": params,
                    "group": name,
                    "lr": settings.for_group(name).lr,
                    "weight_decay": settings.for_group(name).weight_decay,
                }
                for name, params in groups.items()
            ]
        else:
            # One group, as runs saved before groups existed have it: they still resume.
            param_groups = [
                {
                    "params": list(self.learner.meta_parameters()),
                    "lr": settings.lr,
                    "weight_decay": settings.weight_decay,
                }
            ]
        if settings.name == "sgd":
            return torch.optim.SGD(param_groups, lr=settings.lr)
        return torch.optim.Adam(param_groups, lr=settings.lr)

    def _learning_rate(self, step: int, group: str | None = None) -> float:
        settings = self.config.optimizer.for_group(group)
        return settings.learning_rate(step, self.config.steps)

    def _start_fresh(self) -> None:
        if not self.group.is_main:
            return
        if (self.run_dir / "last.json").exists():
            raise TrainingError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

    def _write_config(self) -> None:
        """Store the resolved config, unless ``--config`` is that very file.

        A user's own file stays as written (comments and all) when it says the same as the
        run; one that would have to change is refused, never overwritten.
        """
        path = self.run_dir / "config.yaml"
        if self.config_file is not None and _same_file(self.config_file, path):
            if load_config(path) == self.config:
                return
            raise TrainingError(
                f"--config {display_path(self.config_file)} is the config file of the run in "
                f"{display_path(self.run_dir)}, and the --set overrides would change it; "
                "put the changes into the file itself, or copy it elsewhere and pass the copy"
            )
        atomic_write_text(path, dump_config(self.config))

    def _resume(self) -> None:
        try:
            checkpoint = load_checkpoint(self.run_dir / "last.json")
        except CheckpointError as exc:
            raise TrainingError(f"cannot resume: {exc}") from None
        saved = _comparable_config(checkpoint.config)
        current = _comparable_config(self.config.model_dump(mode="json"))
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise TrainingError(
                f"cannot resume {self.run_dir}: the config differs from the saved one in "
                f"{', '.join(changed)}"
            )
        saved_inputs = ModelInputs.from_json(checkpoint.inputs, self.config)
        if checkpoint.inputs and saved_inputs != self.inputs:
            raise TrainingError(
                f"cannot resume {self.run_dir}: the training images changed since it was saved "
                f"(inputs then {checkpoint.inputs}, now {self.inputs.to_json()})"
            )
        self.learner.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
        restore_rng_state(checkpoint.rng)
        self.start_step = self.step = checkpoint.step
        self.good_step = checkpoint.step
        self.spent_before = ComputeSpent.from_metrics(checkpoint.metrics)
        limit = self.spent_before.exceeded(self.config.budget)
        if limit is not None and checkpoint.step < self.config.steps:
            raise TrainingError(
                f"cannot resume {self.run_dir}: it has spent its {limit} "
                f"({self.spent_before.describe()} at step {checkpoint.step}); to train on, "
                f"raise it: --resume --set {limit}=MORE (or {limit}=null for no limit)"
            )
        self.best_accuracy = float(checkpoint.metrics.get("best_accuracy", -1.0))
        if self.group.is_main:
            self._write_config()
            self._truncate_metrics(checkpoint.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint a run resumes from.

        Lines that are not JSON (the torn end of an append cut short by a full disk or a
        kill) are dropped with a warning: the steps they stood for are trained again.
        """
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        torn = 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        if torn:
            log.warning(
                "%s: dropped %d incomplete line(s), the end of a write that was cut short",
                display_path(path),
                torn,
            )
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    # -- loop ------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any], writer: Any) -> None:
        if not self.group.is_main:
            return
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        if writer is not None:
            for key, value in record.items():
                if key not in ("step", "phase") and isinstance(value, int | float):
                    writer.add_scalar(f"{record['phase']}/{key}", value, record["step"])

    def _snapshot(self, tags: list[str], step: int, metrics: dict[str, Any]) -> _PendingCheckpoint:
        """The state to checkpoint now (the optimizer's tensors only change in its step)."""
        return _PendingCheckpoint(
            tags=tags,
            step=step,
            metrics={**metrics, "best_accuracy": self.best_accuracy},
            model_state={k: v.detach().clone() for k, v in self.learner.state_dict().items()},
            optimizer_state=self.optimizer.state_dict(),
            rng=capture_rng_state(),
        )

    def _write(self, pending: _PendingCheckpoint) -> None:
        for tag in pending.tags:
            save_checkpoint(
                self.run_dir,
                tag,
                step=pending.step,
                model_state=pending.model_state,
                optimizer_state=pending.optimizer_state,
                config=self.config.model_dump(mode="json"),
                metrics=pending.metrics,
                inputs=self.inputs.to_json(),
                rng=pending.rng,
            )
        if "last" in pending.tags:
            self.good_step = pending.step

    def _non_finite(self, what: str, step: int, loss: float) -> TrainingError:
        """The error that stops a run at a non-finite loss, with advice that works."""
        lower = self.config.optimizer.lr / 10
        new_run = self.run_dir.with_name(f"{self.run_dir.name}-lr{lower:g}")
        if self.good_step is None:
            kept = "No checkpoint had been written yet."
        elif self.good_step == step - 1:
            # Resumed from a checkpoint no later step had vouched for (a run's final one).
            kept = (
                f"{display_path(self.run_dir / 'last.json')} holds the very weights that gave "
                "it, so this run has no good checkpoint to go back to."
            )
        else:
            kept = (
                f"The last good checkpoint is {display_path(self.run_dir / 'last.json')} "
                f"(step {self.good_step})."
            )
        command = train_command(
            self.run_dir / "config.yaml",
            new_run,
            self.data_root,
            "--set",
            f"optimizer.lr={lower:g}",
        )
        return TrainingError(
            f"the {what} became non-finite at step {step} (loss {loss}); stopped before "
            f"saving the weights that caused it. {kept} Resuming would repeat the same steps "
            "and --resume refuses a changed learning rate, so train a new run with a lower "
            f"optimizer.lr (or a lower inner learning rate, method.options.inner_lr): {command}"
        )

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.learner.meta_parameters() if p.grad is not None]
        return all(bool(torch.isfinite(g).all()) for g in grads)

    def validate(self) -> EvaluationResult:
        """Validation accuracy on the held-out pool (fixed episodes)."""
        if self.val_sampler is None:
            raise TrainingError("this run has no validation set (data.val_set is null)")
        return evaluate_learner(self.learner, self.val_sampler, self.config.validation.episodes)

    def run(self) -> dict[str, Any]:
        """Train from the current step to ``config.steps`` (or until a budget is spent).

        Returns:
            The final step's metrics; :attr:`stopped_by` names the budget limit that ended
            the run early, if one did.
        """
        from torch.utils.tensorboard import SummaryWriter

        config = self.config
        group = self.group
        writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard")) if group.is_main else None
        first_task, local_tasks = group.local_tasks(config.meta_batch)
        self.learner.train()
        last: dict[str, Any] = {}
        pending: _PendingCheckpoint | None = None
        clock = ComputeClock(self.spent_before)
        try:
            for step in range(self.start_step, config.steps):
                for param_group in self.optimizer.param_groups:
                    param_group["lr"] = self._learning_rate(step, param_group.get("group"))
                start = step * config.meta_batch + first_task
                batch = self.sampler.tasks(range(start, start + local_tasks))
                self.optimizer.zero_grad(set_to_none=True)
                metrics = self.learner.compute_meta_gradients(batch)
                average_gradients(self.learner.meta_parameters(), group)
                loss = all_reduce_mean(metrics.loss, group)
                accuracy = all_reduce_mean(metrics.accuracy, group)
                if not (math.isfinite(loss) and self._gradients_finite()):
                    what = "loss" if not math.isfinite(loss) else "meta-gradient"
                    raise self._non_finite(what, step + 1, loss)
                if pending is not None:
                    self._write(pending)  # its weights just gave a finite loss
                    pending = None
                if config.optimizer.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(
                        list(self.learner.meta_parameters()), config.optimizer.grad_clip
                    )
                self.optimizer.step()
                average_buffers(self.learner, group)
                done = self.step = step + 1
                last = {"loss": loss, "accuracy": 100.0 * accuracy}
                spent = clock.spent(group)
                self.stopped_by = spent.exceeded(config.budget)
                final = done == config.steps or self.stopped_by is not None
                if self.on_step is not None:
                    self.on_step(done, last)
                if done % config.log_every == 0 or final:
                    record = {"phase": "train", "step": done, **last}
                    record["lr"] = self._learning_rate(step)
                    record |= spent.to_metrics()
                    if self.stopped_by is not None:
                        record["stopped_by"] = self.stopped_by
                    self._log(record, writer)
                tags = []
                validate_now = config.validation.every and done % config.validation.every == 0
                # Only rank 0 validates; the others wait for it at the next all-reduce.
                has_validation = self.val_sampler is not None
                if group.is_main and has_validation and (validate_now or final):
                    result = self.validate()
                    self._log({"phase": "val", "step": done, **result.to_json()}, writer)
                    last["val_accuracy"] = result.accuracy
                    last["val_ci95"] = result.ci95
                    if result.accuracy > self.best_accuracy:
                        self.best_accuracy = result.accuracy
                        tags.append("best")
                if done % config.checkpoint_every == 0 or final:
                    tags.append("last")
                if tags and group.is_main:
                    pending = self._snapshot(tags, done, last | spent.to_metrics())
                    if final:
                        self._write(pending)  # no step follows to check it
                        pending = None
                if self.stopped_by is not None:
                    break
        finally:
            if writer is not None:
                writer.close()
            self.close()
        return last


@dataclass(frozen=True)
class ComputeSpent:
    """Compute a run has spent training, summed over its resumes (and processes)."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> ComputeSpent:
        """What a checkpoint's metrics say was spent (nothing for runs saved before)."""
        return cls(float(metrics.get("cpu_seconds", 0.0)), float(metrics.get("seconds", 0.0)))

    def to_metrics(self) -> dict[str, float]:
        return {"seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds}

    def exceeded(self, budget: BudgetConfig) -> str | None:
        """The config key of the first limit of ``budget`` this reaches, if any."""
        if budget.cpu_seconds is not None and self.cpu_seconds >= budget.cpu_seconds:
            return "budget.cpu_seconds"
        if budget.wall_seconds is not None and self.wall_seconds >= budget.wall_seconds:
            return "budget.wall_seconds"
        return None

    def describe(self) -> str:
        return f"{self.cpu_seconds:.0f} CPU s, {self.wall_seconds:.0f} s elapsed"


class ComputeClock:
    """Measures the compute spent since it was made, on top of what a resumed run had."""

    def __init__(self, before: ComputeSpent) -> None:
        self.before = before
        self.cpu_start = time.process_time()
        self.wall_start = time.perf_counter()

    def spent(self, group: ProcessGroup) -> ComputeSpent:
        """The run's total so far, the same on every process (CPU summed, wall averaged)."""
        cpu = all_reduce_mean(time.process_time() - self.cpu_start, group) * group.world_size
        wall = all_reduce_mean(time.perf_counter() - self.wall_start, group)
        return ComputeSpent(self.before.cpu_seconds + cpu, self.before.wall_seconds + wall)


def _check_utf8(run_dir: Path) -> None:
    """Refuse a run directory other tools (TensorBoard) cannot name, before writing."""
    try:
        os.fspath(run_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise TrainingError(
            f"--out {display_path(run_dir)}: this path is not valid UTF-8, which TensorBoard "
            "cannot write to; choose a UTF-8 path"
        ) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _augmentation(settings: AugmentConfig | None) -> AffineAugmentation | None:
    return None if settings is None else AffineAugmentation(**settings.model_dump())


def _check_disjoint(train: ClassPool, val: ClassPool) -> None:
    """Refuse validation classes that are also trained on (rotations aside)."""

    def names(pool: ClassPool) -> set[str]:
        labels = pool.dataset.class_names
        return {f"{pool.dataset.name}/{labels[c]}" for c in pool.classes.tolist()}

    shared = sorted(names(train) & names(val))
    if shared:
        raise TrainingError(
            f"data.val_set {val.name!r} shares {len(shared)} classes with data.train_set "
            f"{train.name!r} (e.g. {shared[0]}), so validation would not measure "
            "generalisation to new classes; choose disjoint parts such as background:train "
            "and background:val"
        )
