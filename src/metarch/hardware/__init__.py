"""Hardware awareness: what networks cost on real devices.

:mod:`metarch.hardware.tables` reads measured whole-network latencies of real devices
(HELP's tables for the NAS-Bench-201 and FBNet spaces, or a user's own CSV in that form).
"""

from metarch.hardware.tables import DeviceLatencyTable, LatencyTableError

__all__ = ["DeviceLatencyTable", "LatencyTableError"]
