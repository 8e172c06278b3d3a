"""A latency predictor meta-learned across devices, adapted to a new one from a few networks.

The setting is HELP's (Lee, Lee and Hwang, NeurIPS 2021): whole-network latencies of many
devices are known (a table in HELP's CSV form); a new device gets only a handful of
measured networks, and the predictor must then rank all the others. What HELP describes,
and we do too: each device is one task; the networks measured on a new device are a fixed
set of *reference* networks (chosen once, by a seed), whose latencies both form the
device's hardware embedding and are the support set the predictor adapts on by MAML.

Our choices (HELP's code is not copied; where it differs, it is ours): the predictor is
:class:`~metarch.models.mlp.MLP` meta-trained by our own
:class:`~metarch.meta.maml.MAML` (second order, task-batched) on

* inputs: one-hot architecture tokens (any table: the architecture string split at
  ``|``, ``+`` and ``-`` into positions, one category per token seen at a position; so a
  table of a space metarch does not know works too), concatenated with the hardware
  embedding;
* targets: log latency, standardised per device by the reference networks' mean and
  deviation (so devices of 3 ms and 300 ms are one problem, and the embedding is the
  reference networks' standardised log latencies, in a fixed order);
* model selection: the iteration with the best mean Spearman on validation devices.

Ranks are what a search uses, so the predictor returns standardised log latencies; they
rank networks like the latencies do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import Tensor

from metarch.errors import MetarchError
from metarch.hardware.check import score_predictions
from metarch.hardware.tables import DeviceLatencyTable
from metarch.meta.maml import MAML
from metarch.models.mlp import MLP
from metarch.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "ArchitectureTokens",
    "FewShotError",
    "FewShotLatencyPredictor",
    "FewShotSettings",
    "RegressionTasks",
    "cache_key",
    "pick_devices",
]


class FewShotError(MetarchError):
    """A few-shot latency problem that cannot be set up as asked."""


def pick_devices(table: DeviceLatencyTable, patterns: Sequence[str]) -> list[str]:
    """The table's devices matching ``patterns`` (names, or prefixes ending in ``*``)."""
    chosen: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        if pattern.endswith("*"):
            found = [d for d in table.devices if d.startswith(pattern[:-1])]
        else:
            found = [pattern] if pattern in table.devices else []
        if not found:
            raise FewShotError(
                f"{table.source} has no device {pattern!r}; its devices: {', '.join(table.devices)}"
            )
        chosen.extend(d for d in found if d not in chosen)
    return chosen


@dataclass(frozen=True)
class ArchitectureTokens:
    """One-hot encoding of architecture strings by token position.

    Attributes:
        vocabulary: Per position, the tokens seen there (in first-seen order).
    """

    vocabulary: tuple[tuple[str, ...], ...]

    @staticmethod
    def split(architecture: str) -> list[str]:
        """The tokens of an architecture string, by position."""
        return [token for token in re.split(r"[|+\-]", architecture) if token]

    @classmethod
    def fit(cls, architectures: Sequence[str]) -> ArchitectureTokens:
        """The vocabulary of ``architectures`` (which must all have as many tokens)."""
        columns: list[dict[str, None]] = []
        for architecture in architectures:
            tokens = cls.split(architecture)
            if not columns:
                columns = [{} for _ in tokens]
            if len(tokens) != len(columns):
                raise FewShotError(
                    f"architecture {architecture!r} has {len(tokens)} tokens, others "
                    f"{len(columns)}: a table must hold architectures of one space"
                )
            for column, token in zip(columns, tokens, strict=True):
                column.setdefault(token, None)
        return cls(tuple(tuple(column) for column in columns))

    @property
    def size(self) -> int:
        """Length of an encoding."""
        return sum(len(column) for column in self.vocabulary)

    def encode(self, architectures: Sequence[str]) -> Tensor:
        """``(N, size)`` one-hot rows (a token unseen at its position encodes as zeros)."""
        index = [{token: i for i, token in enumerate(column)} for column in self.vocabulary]
        offsets = np.cumsum([0] + [len(c) for c in self.vocabulary[:-1]])
        rows = torch.zeros(len(architectures), self.size)
        for row, architecture in enumerate(architectures):
            tokens = self.split(architecture)
            if len(tokens) != len(self.vocabulary):
                raise FewShotError(
                    f"architecture {architecture!r} has {len(tokens)} tokens; the predictor "
                    f"was trained on architectures of {len(self.vocabulary)}"
                )
            for position, token in enumerate(tokens):
                slot = index[position].get(token)
                if slot is not None:
                    rows[row, int(offsets[position]) + slot] = 1.0
        return rows


@dataclass(frozen=True)
class FewShotSettings:
    """How the predictor is meta-trained (defaults: ours, sized for a 2-core CPU).

    Attributes:
        samples: Reference networks measured on every device (the support set).
        seed: Chooses the reference networks, and seeds meta-training.
        hidden: Widths of the MLP's hidden layers.
        inner_lr: MAML's inner learning rate.
        inner_steps: MAML's inner steps (meta-training and adaptation).
        meta_lr: Adam's rate for the meta-parameters.
        meta_batch: Devices per meta-iteration.
        queries: Networks per device in a meta-iteration's query set.
        iterations: Meta-iterations.
        validate_every: Score the validation devices every this many iterations.
    """

    samples: int = 10
    seed: int = 0
    hidden: tuple[int, ...] = (100, 100)
    inner_lr: float = 0.05
    inner_steps: int = 5
    meta_lr: float = 1e-3
    meta_batch: int = 8
    queries: int = 100
    iterations: int = 2000
    validate_every: int = 100

    def to_json(self) -> dict[str, Any]:
        """A JSON object of the fields."""
        return {**asdict(self), "hidden": list(self.hidden)}


@dataclass
class RegressionTasks:
    """A regression task batch (MAML's :class:`~metarch.meta.base.TaskBatch`)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        """``T``."""
        return int(self.support_x.shape[0])


@dataclass
class FewShotLatencyPredictor:
    """The meta-trained predictor (see the module docstring).

    Attributes:
        tokens: The architecture encoding.
        reference: The reference networks, in embedding order.
        settings: How it was meta-trained.
        train_devices: Devices it was meta-trained on.
        learner: MAML around the MLP.
        history: Validation scores during meta-training.
    """

    tokens: ArchitectureTokens
    reference: list[str]
    settings: FewShotSettings
    train_devices: list[str]
    learner: MAML
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(
        cls, table: DeviceLatencyTable, train_devices: Sequence[str], settings: FewShotSettings
    ) -> FewShotLatencyPredictor:
        """An untrained predictor for ``table``'s architectures (reference set by the seed)."""
        architectures = sorted(table)
        if settings.samples >= len(architectures):
            raise FewShotError(
                f"{settings.samples} reference networks leave none to predict in "
                f"{table.source} ({len(architectures)} networks)"
            )
        reference = random.Random(settings.seed).sample(architectures, settings.samples)
        tokens = ArchitectureTokens.fit(architectures)
        torch.manual_seed(settings.seed)
        model = MLP(tokens.size + settings.samples, settings.hidden, 1)
        learner = MAML(model, inner_lr=settings.inner_lr, steps=settings.inner_steps, loss="mse")
        return cls(tokens, reference, settings, list(train_devices), learner)

    # -- features ------------------------------------------------------------------------

    def standardise(self, reference_ms: Sequence[float]) -> tuple[float, float]:
        """Mean and deviation of the reference networks' log latencies on a device."""
        logs = np.log(np.maximum(np.asarray(reference_ms, dtype=float), 1e-6))
        return float(logs.mean()), float(max(logs.std(), 1e-3))

    def features(self, architectures: Sequence[str], embedding: Tensor) -> Tensor:
        """Inputs ``(N, tokens + samples)``: encodings beside the device's embedding."""
        encoded = self.tokens.encode(architectures)
        return torch.cat([encoded, embedding.expand(len(architectures), -1)], dim=1)

    def device_task(
        self, latencies: Callable[[str], float], queries: Sequence[str]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Support and query ``(x, y)`` of one device (``latencies(arch)`` in ms)."""
        reference_ms = [latencies(a) for a in self.reference]
        mean, deviation = self.standardise(reference_ms)

        def target(values: Sequence[float]) -> Tensor:
            logs = np.log(np.maximum(np.asarray(values, dtype=float), 1e-6))
            return torch.tensor((logs - mean) / deviation, dtype=torch.float32)[:, None]

        support_y = target(reference_ms)
        embedding = support_y[:, 0][None, :]
        support_x = self.features(self.reference, embedding)
        query_x = self.features(queries, embedding)
        return support_x, support_y, query_x, target([latencies(a) for a in queries])

    # -- meta-training -------------------------------------------------------------------

    def meta_train(
        self,
        table: DeviceLatencyTable,
        validation_devices: Sequence[str] = (),
        on_iteration: Callable[[int, int], None] | None = None,
    ) -> None:
        """Meta-train on ``train_devices``; keep the best weights on the validation devices."""
        settings = self.settings
        rng = random.Random(settings.seed + 1)
        others = [a for a in sorted(table) if a not in set(self.reference)]
        optimizer = torch.optim.Adam(self.learner.parameters(), lr=settings.meta_lr)
        best_score, best_state = -math.inf, None
        for iteration in range(1, settings.iterations + 1):
            devices = [rng.choice(self.train_devices) for _ in range(settings.meta_batch)]
            tasks = [
                self.device_task(
                    functools.partial(table.latency, device=device),
                    rng.sample(others, settings.queries),
                )
                for device in devices
            ]
            batch = RegressionTasks(*(torch.stack(part) for part in zip(*tasks, strict=True)))
            self.learner.meta_train_step(batch, optimizer)
            if on_iteration is not None:
                on_iteration(iteration, settings.iterations)
            last = iteration == settings.iterations
            if validation_devices and (iteration % settings.validate_every == 0 or last):
                scores = [self.evaluate(table, d)["spearman"] for d in validation_devices]
                score = float(np.mean(scores))
                self.history.append({"iteration": iteration, "validation_spearman": score})
                if score > best_score:
                    best_score = score
                    best_state = {k: v.clone() for k, v in self.learner.state_dict().items()}
        if best_state is not None:
            self.learner.load_state_dict(best_state)

    # -- adaptation ----------------------------------------------------------------------

    def adapt(self, reference_ms: Sequence[float]) -> Callable[[Sequence[str]], Tensor]:
        """A scorer of architectures on a device, from its reference networks' latencies.

        Returns:
            ``score(architectures)``: standardised log latencies (higher is slower).
        """
        if len(reference_ms) != len(self.reference):
            raise FewShotError(
                f"need the latencies of the {len(self.reference)} reference networks, got "
                f"{len(reference_ms)}"
            )
        lookup = dict(zip(self.reference, reference_ms, strict=True))
        support_x, support_y, _, _ = self.device_task(lookup.__getitem__, [])
        embedding = support_x[:1, self.tokens.size :]
        predict = self.learner.adapt(support_x, support_y)

        def score(architectures: Sequence[str]) -> Tensor:
            with torch.no_grad():
                return predict(self.features(architectures, embedding))[:, 0]

        return score

    def evaluate(self, table: DeviceLatencyTable, device: str) -> dict[str, Any]:
        """Adapt to ``device`` from its reference networks; score on all its others."""
        reference_ms = [table.latency(a, device) for a in self.reference]
        others = [a for a in table if a not in set(self.reference)]
        predicted = self.adapt(reference_ms)(others).numpy()
        measured = [table.latency(a, device) for a in others]
        score = score_predictions(list(predicted), measured)
        return {
            "device": device,
            "spearman": score.spearman,
            "kendall": score.kendall,
            "samples": len(self.reference),
            "networks": score.networks,
        }

    # -- files ---------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """``predictor.json`` and ``predictor.safetensors`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.learner.state_dict().items()}
        atomic_write_bytes(folder / "predictor.safetensors", save_safetensors(state))
        meta = {
            "format": "metarch-fewshot-latency-predictor",
            "version": 1,
            "tokens": [list(column) for column in self.tokens.vocabulary],
            "reference": self.reference,
            "settings": self.settings.to_json(),
            "train_devices": self.train_devices,
            "history": self.history,
        }
        atomic_write_text(folder / "predictor.json", json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> FewShotLatencyPredictor:
        """Read :meth:`save`'s files (JSON and safetensors: nothing is unpickled)."""
        try:
            meta = json.loads((folder / "predictor.json").read_text(encoding="utf-8"))
            settings = FewShotSettings(
                **{**meta["settings"], "hidden": tuple(meta["settings"]["hidden"])}
            )
            tokens = ArchitectureTokens(tuple(tuple(c) for c in meta["tokens"]))
            model = MLP(tokens.size + settings.samples, settings.hidden, 1)
            learner = MAML(
                model, inner_lr=settings.inner_lr, steps=settings.inner_steps, loss="mse"
            )
            learner.load_state_dict(load_file(folder / "predictor.safetensors"))
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise FewShotError(f"cannot load the predictor in {folder}: {exc}") from None
        return cls(
            tokens,
            list(meta["reference"]),
            settings,
            list(meta["train_devices"]),
            learner,
            list(meta.get("history", [])),
        )


def cache_key(table: DeviceLatencyTable, train: Sequence[str], settings: FewShotSettings) -> str:
    """A name for the predictor of this table's training devices and settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings.to_json(), sort_keys=True).encode())
    digest.update(",".join(train).encode())
    for architecture in sorted(table):
        digest.update(architecture.encode())
        for device in train:
            digest.update(f"{table.latency(architecture, device):.6g}".encode())
    return digest.hexdigest()[:16]
