"""Layer latency tables: every distinct layer of a search space, timed once on one device.

The file is JSON, written atomically after every chunk of layers (so a killed profile
resumes where it stopped) and sealed with a SHA-256 checksum over its content (so a
truncated or edited table is refused instead of silently mispredicting)::

    {
      "format": "metarch-layer-latency-table",
      "version": 1,
      "space": {"name": "nasbench201", "settings": {"channels": 16, ...}},
      "num_classes": null,
      "measurement": {"warmup": 10, "repeats": 50, "batch": 1, "rounds": 5},
      "device": {"device": "torch-cpu", "settings": {"threads": 1, ...}, "cpu": "...",
                 "libraries": {"torch": "2.13.0"}, "date": "...", ...},
      "layers": ["stem_conv_bn|in=3x32x32|out=16|k=3|s=1", ...],
      "entries": {"nor_conv_3x3|in=16x32x32|out=16|k=3|s=1":
                  {"median_ms": 0.11, "p10_ms": 0.1, "p90_ms": 0.12, "mad_ms": 0.004,
                   "repeats": 50, "rejected": 1}, ...},
      "complete": true,
      "checksum": "sha256 of the canonical JSON of every other key"
    }

``layers`` is the space's catalogue (what a complete table holds); ``entries`` the layers
timed so far, keys :attr:`metarch.nas.spaces.base.Layer.key`, values a
:class:`metarch.utils.timing.Timing` (median, 10th and 90th percentile and median absolute
deviation in ms, repeats, slow outliers rejected) of the layer's fastest round; a layer's
latency is its median. Layers are timed in chunks, in interleaved rounds
(:meth:`metarch.hardware.devices.base.LocalDevice.measure_many`), and the file is written
after every chunk. The format is versioned: a reader refuses versions it does not know
(``rounds`` was added within version 1; a file without it was timed in one round).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metarch.errors import MetarchError
from metarch.hardware.devices.base import LocalDevice, Measurement
from metarch.nas.spaces.base import Layer, SearchSpace
from metarch.utils.io import atomic_write_text, display_path
from metarch.utils.timing import Timing

__all__ = ["FORMAT", "VERSION", "LayerLatencyTable", "LayerTableError", "profile_layers"]

FORMAT = "metarch-layer-latency-table"
VERSION = 1


class LayerTableError(MetarchError):
    """A layer latency table cannot be read, does not match, or lacks a layer."""


@dataclass
class LayerLatencyTable:
    """Milliseconds of every layer of a space on one device (see the module docstring).

    Attributes:
        space: The space's registered name.
        space_settings: The options the space was made with.
        num_classes: Classes of the head profiled (None: backbones only).
        measurement: Warm-up, repeats and batch every layer was timed with.
        device: The device's fingerprint (name, settings, machine, libraries, date).
        layers: Keys of every layer a complete table holds.
        entries: Timings of the layers profiled so far.
        source: Where the table was read from (for messages).
    """

    space: str
    space_settings: dict[str, Any]
    num_classes: int | None
    measurement: Measurement
    device: dict[str, Any]
    layers: list[str]
    entries: dict[str, Timing] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def complete(self) -> bool:
        """Whether every layer has been timed."""
        return all(key in self.entries for key in self.layers)

    @property
    def device_name(self) -> str:
        """The registered name of the device it was profiled on."""
        return str(self.device.get("device", "?"))

    def latency(self, key: str) -> float:
        """Milliseconds of the layer ``key``.

        Raises:
            LayerTableError: Naming the layer and the command that profiles it.
        """
        timing = self.entries.get(key)
        if timing is None:
            where = "is still being profiled" if key in self.layers else "is not in it"
            raise LayerTableError(
                f"layer {key!r} has no latency in {self.source} (it {where}); profile it "
                f"with: metarch hardware profile --space {self.space} --device "
                f"{self.device_name} --out {self.source}"
            )
        return timing.median_ms

    def check_space(self, space: SearchSpace[Any], num_classes: int | None) -> None:
        """Refuse a table of another space, other settings or another head."""
        wanted = (space.registered_name, space.settings(), num_classes)
        have = (self.space, self.space_settings, self.num_classes)
        if wanted != have:
            raise LayerTableError(
                f"{self.source} was profiled for space {self.space} {self.space_settings} "
                f"with num_classes={self.num_classes}, not {wanted[0]} {wanted[1]} with "
                f"num_classes={num_classes}; profile a table for it with metarch hardware "
                "profile"
            )

    def network_latency(self, layers: list[Layer]) -> float:
        """The sum of ``layers``' latencies (milliseconds)."""
        return sum(self.latency(layer.key) for layer in layers)

    # -- files ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The file's content, checksum included."""
        body: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "space": {"name": self.space, "settings": self.space_settings},
            "num_classes": self.num_classes,
            "measurement": {
                "warmup": self.measurement.warmup,
                "repeats": self.measurement.repeats,
                "batch": self.measurement.batch,
                "rounds": self.measurement.rounds,
            },
            "device": self.device,
            "layers": self.layers,
            "entries": {key: timing.to_json() for key, timing in self.entries.items()},
            "complete": self.complete,
        }
        return {**body, "checksum": _checksum(body)}

    def save(self, path: Path) -> None:
        """Write the table to ``path`` atomically."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        self.source = display_path(path)

    @classmethod
    def load(cls, path: Path) -> LayerLatencyTable:
        """Read and verify a table file.

        Raises:
            LayerTableError: The file is missing, not JSON, of another format or version,
                edited or truncated (checksum), or malformed; the message says which.
        """
        where = display_path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LayerTableError(f"layer latency table {where} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LayerTableError(
                f"{where} is not a layer latency table (not JSON: {exc}); it may be "
                "truncated: profile it again with metarch hardware profile"
            ) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise LayerTableError(f"{where} is not a layer latency table (format {FORMAT!r})")
        if document.get("version") != VERSION:
            raise LayerTableError(
                f"{where} is version {document.get('version')!r} of the table format; this "
                f"metarch reads version {VERSION}"
            )
        stored = document.pop("checksum", None)
        if stored != _checksum(document):
            raise LayerTableError(
                f"{where} fails its checksum: it was edited or cut short after it was written; "
                "profile the device again (metarch hardware profile resumes a table only "
                "from an intact file)"
            )
        try:
            measurement = document["measurement"]
            return cls(
                space=str(document["space"]["name"]),
                space_settings=dict(document["space"]["settings"]),
                num_classes=document["num_classes"],
                measurement=Measurement(
                    int(measurement["warmup"]),
                    int(measurement["repeats"]),
                    int(measurement["batch"]),
                    int(measurement.get("rounds", 1)),
                ),
                device=dict(document["device"]),
                layers=[str(key) for key in document["layers"]],
                entries={k: Timing.from_json(v) for k, v in document["entries"].items()},
                source=where,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LayerTableError(f"{where} is malformed: {exc!r}") from None


def _checksum(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def profile_layers(
    space: SearchSpace[Any],
    device: LocalDevice,
    out: Path,
    *,
    how: Measurement | None = None,
    num_classes: int | None = None,
    on_layer: Callable[[int, int, str], None] | None = None,
    chunk: int = 64,
) -> LayerLatencyTable:
    """Time every distinct layer of ``space`` on ``device``; the table, saved to ``out``.

    Layers are timed ``chunk`` at a time in ``how.rounds`` interleaved rounds; the table
    is saved after every chunk. If ``out`` holds a table of the same space,
    device settings and measurement (an interrupted profile), its layers are kept and only
    the missing ones are timed; a table of anything else is refused, never overwritten.

    Args:
        space: The search space (its :meth:`~SearchSpace.layer_catalogue`).
        device: Where to time the layers.
        out: The table file.
        how: Warm-up, repeats and batch.
        num_classes: Classes of the head to profile too (None: backbones).
        on_layer: Called with (layers done, layers in all, key) after each layer's last
            round.
        chunk: Layers timed together (and lost at most, if the profile is killed).
    """
    device.check_available()
    how = how or Measurement()
    catalogue = space.layer_catalogue(num_classes=num_classes)
    table = LayerLatencyTable(
        space=space.registered_name,
        space_settings=space.settings(),
        num_classes=num_classes,
        measurement=how,
        device=device.fingerprint(),
        layers=[layer.key for layer in catalogue],
        source=display_path(out),
    )
    if out.exists():
        table.entries = _resumable_entries(LayerLatencyTable.load(out), table)
    missing = [layer for layer in catalogue if layer.key not in table.entries]
    done = len(catalogue) - len(missing)
    for start in range(0, len(missing), max(1, chunk)):
        layers = missing[start : start + max(1, chunk)]
        timings = device.measure_many(
            [(layer.build(), layer.input_shape) for layer in layers],
            how,
            on_timed=_last_round(layers, how.rounds, done, len(catalogue), on_layer),
        )
        table.entries.update({layer.key: t for layer, t in zip(layers, timings, strict=True)})
        done += len(layers)
        table.save(out)
    table.save(out)
    return table


def _last_round(
    layers: list[Layer],
    rounds: int,
    done: int,
    total: int,
    on_layer: Callable[[int, int, str], None] | None,
) -> Callable[[int, int], None] | None:
    """A ``measure_many`` callback that reports each layer of a chunk in its last round."""
    if on_layer is None:
        return None
    before = (rounds - 1) * len(layers)

    def timed(count: int, _total: int) -> None:
        if count > before:
            on_layer(done + count - before, total, layers[count - before - 1].key)

    return timed


def _resumable_entries(saved: LayerLatencyTable, fresh: LayerLatencyTable) -> dict[str, Timing]:
    """The entries of an interrupted profile, if it profiled what ``fresh`` will."""
    same = (
        saved.space == fresh.space
        and saved.space_settings == fresh.space_settings
        and saved.num_classes == fresh.num_classes
        and saved.measurement == fresh.measurement
        and saved.device.get("device") == fresh.device.get("device")
        and saved.device.get("settings") == fresh.device.get("settings")
        and saved.device.get("cpu") == fresh.device.get("cpu")
    )
    if not same:
        raise LayerTableError(
            f"{saved.source} holds a table of another profile ({saved.space} on "
            f"{saved.device_name} {saved.device.get('settings')}); choose another --out or "
            "remove it"
        )
    return {key: timing for key, timing in saved.entries.items() if key in fresh.layers}
