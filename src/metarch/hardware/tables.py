"""Measured whole-network latencies of real devices, read from CSV.

The form is HELP's (Lee, Lee and Hwang, NeurIPS 2021), as shipped in
``../shared/data/hardware/``: a column ``arch`` holding each network's architecture string
(for NAS-Bench-201 the benchmark's ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``), an optional
``index``, then one column per device setting (``1080ti_1``, ``gold_6240``, ``pixel3``,
...) in milliseconds per forward pass. Any device columns are accepted, so a user's own
measurements of devices we have never seen read the same way. Every value is checked: a
non-numeric, non-finite or negative latency, a repeated architecture or a missing ``arch``
column is refused with the file, line and column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from metarch.errors import MetarchError

__all__ = ["DeviceLatencyTable", "LatencyTableError"]

#: Columns that are not devices.
_KEY_COLUMNS = ("index", "arch")


class LatencyTableError(MetarchError):
    """A latency table cannot be read, or does not hold what was asked of it."""


@dataclass(frozen=True)
class DeviceLatencyTable:
    """Latency in milliseconds of whole networks on devices: ``table[arch][device]``.

    Attributes:
        source: Where the table was read from (for messages).
        devices: The device settings, in the file's column order.
        rows: Latencies by architecture string, then by device.
    """

    source: str
    devices: tuple[str, ...]
    rows: Mapping[str, Mapping[str, float]]

    @classmethod
    def from_csv(cls, path: Path) -> DeviceLatencyTable:
        """Read and check a table in HELP's form (see the module docstring)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LatencyTableError(f"latency table {path} not found") from None
        except UnicodeDecodeError as error:
            raise LatencyTableError(
                f"latency table {path} is not UTF-8 text (byte {error.start}); "
                "save it as CSV in UTF-8"
            ) from None
        reader = csv.DictReader(text.splitlines())
        header = list(reader.fieldnames or [])
        if "arch" not in header:
            raise LatencyTableError(
                f"{path}: no 'arch' column (found {', '.join(header) or 'no header'}); the "
                "first line must name the columns: [index,]arch,DEVICE,DEVICE,..."
            )
        devices = tuple(name for name in header if name not in _KEY_COLUMNS)
        if not devices:
            raise LatencyTableError(f"{path}: no device columns besides {', '.join(header)}")
        rows: dict[str, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            arch = (row.get("arch") or "").strip()
            if not arch:
                raise LatencyTableError(f"{path}, line {line}: empty 'arch'")
            if arch in rows:
                raise LatencyTableError(f"{path}, line {line}: architecture {arch} appears twice")
            rows[arch] = {
                device: _latency(path, line, device, row.get(device)) for device in devices
            }
        if not rows:
            raise LatencyTableError(f"{path}: no rows below the header")
        return cls(str(path), devices, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __contains__(self, architecture: object) -> bool:
        return architecture in self.rows

    def latency(self, architecture: str, device: str) -> float:
        """Milliseconds of ``architecture`` on ``device``."""
        return self.latencies(architecture)[self._device(device)]

    def latencies(self, architecture: str) -> Mapping[str, float]:
        """Milliseconds of ``architecture`` on every device of the table."""
        try:
            return self.rows[architecture]
        except KeyError:
            raise LatencyTableError(
                f"{self.source} has no row for architecture {architecture!r} "
                f"({len(self.rows)} architectures, e.g. {next(iter(self.rows))})"
            ) from None

    def _device(self, device: str) -> str:
        if device not in self.devices:
            raise LatencyTableError(
                f"{self.source} has no device {device!r}; its devices: {', '.join(self.devices)}"
            )
        return device


def _latency(path: Path, line: int, device: str, value: str | None) -> float:
    where = f"{path}, line {line}, column {device!r}"
    if value is None or not value.strip():
        raise LatencyTableError(f"{where}: missing latency")
    try:
        number = float(value)
    except ValueError:
        raise LatencyTableError(f"{where}: {value!r} is not a number of milliseconds") from None
    if not math.isfinite(number) or number < 0:
        raise LatencyTableError(f"{where}: latency {value} must be a finite number >= 0 ms")
    return number
