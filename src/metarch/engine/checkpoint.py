"""Checkpoints: safetensors weights plus a JSON sidecar, written so a crash never corrupts them.

A checkpoint called ``TAG`` (``last``, ``best``) in a run directory is

* ``TAG-STEP.safetensors`` — the learner's state (parameters and buffers), the outer
  optimizer's tensors (``optimizer/...``) and the torch RNG state (``rng/torch``);
* ``TAG.json`` — the sidecar: step, config, metrics, what the model's inputs are (shape
  and normalisation), the optimizer's non-tensor state, the Python and numpy RNG states,
  the name and SHA-256 of the tensor file, and the SHA-256 of the sidecar's own content
  (``sidecar_sha256``), so a damaged or edited pair is refused, never half-trusted.

The tensor file is written under a new name first; the sidecar is then replaced atomically
and names it, and only then are older tensor files of the tag removed. Whatever moment a
process is killed, ``TAG.json`` names a complete file. Nothing is ever unpickled, and a
sidecar may only name a file next to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from metarch.errors import MetarchError
from metarch.utils.io import atomic_write_bytes, atomic_write_text, display_path, sha256_file

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT = 1

log = logging.getLogger(__name__)

# Sidecars written before ``sidecar_sha256`` existed load with one warning per process.
_warned_unsigned = False


class CheckpointError(MetarchError):
    """A checkpoint is missing, incomplete or does not match the run."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        step: Meta-training steps completed.
        model_state: Learner state dict.
        optimizer_state: Outer optimizer state dict (``None`` if it was not saved).
        config: The run's resolved config (as a mapping).
        metrics: Metrics recorded with the checkpoint.
        rng: Saved RNG states (restored by :func:`restore_rng_state`).
        path: The sidecar file.
        inputs: What the model takes: ``{"shape": [C, H, W], "normalization": {"mean":
            [...], "std": [...]} or None}``; empty for checkpoints written before it was
            recorded (1-channel, unnormalised images of the config's size).
    """

    step: int
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    rng: dict[str, Any]
    path: Path
    inputs: dict[str, Any] = field(default_factory=dict)


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors of an optimizer state dict, keyed by path, and the JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        plain_state[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().clone().contiguous()
            else:
                plain_state[str(index)][name] = value
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list[Any]:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True always gives the MT19937 tuple
    name, keys, position, has_gauss, cached = state
    return [name, np.asarray(keys).tolist(), int(position), int(has_gauss), float(cached)]


def capture_rng_state() -> dict[str, Any]:
    """The global torch, Python and numpy RNG states, as :func:`save_checkpoint` takes them."""
    return {
        "torch": torch.get_rng_state(),
        "python": _python_rng_state(),
        "numpy": _numpy_rng_state(),
    }


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Restore the global torch, Python and numpy RNG states saved in a checkpoint."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        name, keys, position, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def save_checkpoint(
    run_dir: Path,
    tag: str,
    *,
    step: int,
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any] | None,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``tag`` of ``run_dir`` (see the module docstring).

    ``rng`` (from :func:`capture_rng_state`) is the RNG state to record; default: now.

    Returns:
        The sidecar path.
    """
    rng = capture_rng_state() if rng is None else rng
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().clone().contiguous() for k, v in model_state.items()}
    plain_optimizer = None
    if optimizer_state is not None:
        optimizer_tensors, plain_optimizer = _split_optimizer_state(optimizer_state)
        tensors.update(optimizer_tensors)
    tensors["rng/torch"] = rng["torch"]
    tensor_file = run_dir / f"{tag}-{step:08d}.safetensors"
    atomic_write_bytes(tensor_file, save_safetensors(tensors))
    sidecar = {
        "format": FORMAT,
        "step": step,
        "tensors": tensor_file.name,
        "sha256": sha256_file(tensor_file),
        "config": config,
        "metrics": metrics or {},
        "inputs": inputs or {},
        "optimizer": plain_optimizer,
        "rng": {"python": rng["python"], "numpy": rng["numpy"]},
    }
    sidecar["sidecar_sha256"] = _sidecar_digest(sidecar)
    path = run_dir / f"{tag}.json"
    atomic_write_text(path, json.dumps(sidecar, indent=1) + "\n")
    # Only now, with the sidecar pointing at the new file, do older files of the tag go.
    for old in run_dir.glob(f"{tag}-*.safetensors"):
        if old != tensor_file:
            old.unlink(missing_ok=True)
    return path


def _sidecar_digest(sidecar: dict[str, Any]) -> str:
    """SHA-256 of a sidecar's content other than this digest (key order does not matter)."""
    body = {k: v for k, v in sidecar.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_sidecar_digest(path: Path, sidecar: dict[str, Any]) -> None:
    global _warned_unsigned
    recorded = sidecar.get("sidecar_sha256")
    if recorded is None:
        if not _warned_unsigned:
            _warned_unsigned = True
            log.warning(
                "%s has no checksum of its own (written by an older metarch); loading it unchecked",
                display_path(path),
            )
        return
    if recorded != _sidecar_digest(sidecar):
        raise CheckpointError(
            f"{display_path(path)} was changed or damaged after it was written (its content "
            f"does not match its checksum){_earlier_checkpoints(path)}"
        )


def _tensor_file(path: Path, sidecar: dict[str, Any]) -> Path:
    """The tensor file a sidecar names, which must be a plain file name next to it."""
    name = sidecar.get("tensors")
    if (
        not isinstance(name, str)
        or Path(name).name != name
        or name in ("", ".", "..")
        or not name.endswith(".safetensors")
    ):
        raise CheckpointError(
            f"{display_path(path)} names the tensor file {name!r}, which is not a "
            ".safetensors file in its own folder; refusing to read it"
        )
    tensor_file = path.parent / name
    if tensor_file.is_symlink() and tensor_file.resolve().parent != path.parent.resolve():
        raise CheckpointError(
            f"{display_path(path)} names {name}, a link out of the run directory; "
            "refusing to read it"
        )
    return tensor_file


def _read_tensors(path: Path, tensor_file: Path, sha256: str | None) -> dict[str, Tensor]:
    def damaged(reason: str) -> CheckpointError:
        return CheckpointError(
            f"{display_path(tensor_file)} is truncated or corrupt ({reason})"
            f"{_earlier_checkpoints(path)}"
        )

    if sha256 is not None and sha256_file(tensor_file) != sha256:
        raise damaged(f"its SHA-256 does not match the one {path.name} records")
    try:
        return load_safetensors(tensor_file.read_bytes())
    except SafetensorError as exc:
        raise damaged(str(exc)) from None


def _step_if_intact(path: Path) -> int | None:
    """The step of the checkpoint ``path`` if it loads and matches its checksums."""
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
            return None
        if sidecar.get("sidecar_sha256", _sidecar_digest(sidecar)) != _sidecar_digest(sidecar):
            return None
        tensor_file = _tensor_file(path, sidecar)
        if sha256_file(tensor_file) != sidecar.get("sha256"):
            return None
        return int(sidecar["step"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None


def _earlier_checkpoints(broken: Path) -> str:
    """Advice naming the run's other intact checkpoints (for a message about ``broken``)."""
    intact = [
        (other, step)
        for other in sorted(broken.parent.glob("*.json"))
        if other.name != broken.name and (step := _step_if_intact(other)) is not None
    ]
    run = display_path(broken.parent)
    if not intact:
        return f"; {run} holds no other intact checkpoint: train again into a new --out"
    listed = ", ".join(f"{display_path(p)} (step {step})" for p, step in intact)
    if broken.name != "last.json":
        return f"; the run's intact checkpoints: {listed} (evaluate with --checkpoint PATH)"
    # Resuming reads last.json only; a copy of another sidecar there resumes from its step.
    return (
        f"; resume from an earlier checkpoint: {listed} (copy it over "
        f"{display_path(broken)}, then resume)"
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint from its sidecar (``RUN/last.json``) or its run directory + tag.

    Raises:
        CheckpointError: If the sidecar or its tensor file is missing or does not match.
    """
    if path.is_dir():
        path = path / "last.json"
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({exc})") from None
    if not isinstance(sidecar, dict):
        raise CheckpointError(f"{display_path(path)} is not a checkpoint sidecar")
    if sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {sidecar.get('format')!r}")
    _check_sidecar_digest(path, sidecar)
    tensor_file = _tensor_file(path, sidecar)
    if not tensor_file.is_file():
        raise CheckpointError(
            f"{display_path(path)} names {tensor_file.name}, which is missing"
            f"{_earlier_checkpoints(path)}"
        )
    tensors = _read_tensors(path, tensor_file, sidecar.get("sha256"))
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer/")}
    optimizer_state = None
    if sidecar["optimizer"] is not None:
        optimizer_state = _join_optimizer_state(optimizer_tensors, sidecar["optimizer"])
    rng = dict(sidecar["rng"])
    rng["torch"] = tensors["rng/torch"]
    return Checkpoint(
        step=int(sidecar["step"]),
        model_state=model_state,
        optimizer_state=optimizer_state,
        config=sidecar["config"],
        metrics=sidecar["metrics"],
        rng=rng,
        path=path,
        inputs=dict(sidecar.get("inputs") or {}),
    )
