"""Real-device latency tables: reading HELP's CSV form, and refusing bad tables clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarch.hardware import DeviceLatencyTable, LatencyTableError
from metarch.nas import create_space

HEADER = "index,arch,gpu_1,phone\n"
A = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
B = "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "latency.csv"
    path.write_text(text)
    return path


def test_reads_latencies_of_any_devices(tmp_path: Path) -> None:
    loaded = DeviceLatencyTable.from_csv(table(tmp_path, f"{HEADER}0,{A},1.5,20\n1,{B},2,30.25\n"))
    assert loaded.devices == ("gpu_1", "phone") and len(loaded) == 2 and A in loaded
    assert loaded.latency(B, "phone") == 30.25
    assert loaded.latencies(A) == {"gpu_1": 1.5, "phone": 20.0}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"{HEADER}0,{A},1.5,fast\n", "line 2, column 'phone': 'fast' is not a number"),
        (f"{HEADER}0,{A},1.5,-2\n", "line 2, column 'phone': latency -2 must be"),
        (f"{HEADER}0,{A},nan,2\n", "column 'gpu_1': latency nan must be"),
        (f"{HEADER}0,{A},1.5\n", "line 2, column 'phone': missing latency"),
        (f"{HEADER}0,{A},1,2\n1,{A},1,2\n", "line 3: architecture"),
        ("index,network,gpu\n0,x,1\n", "no 'arch' column (found index, network, gpu)"),
        ("index,arch\n0,x\n", "no device columns"),
        (HEADER, "no rows below the header"),
    ],
)
def test_bad_tables_say_what_is_wrong_and_where(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(LatencyTableError, match=r"latency\.csv") as caught:
        DeviceLatencyTable.from_csv(table(tmp_path, text))
    assert words in str(caught.value)


def test_unknown_devices_and_architectures_are_named(tmp_path: Path) -> None:
    loaded = DeviceLatencyTable.from_csv(table(tmp_path, f"{HEADER}0,{A},1.5,20\n"))
    with pytest.raises(LatencyTableError, match="no device 'pixel3'; its devices: gpu_1, phone"):
        loaded.latency(A, "pixel3")
    with pytest.raises(LatencyTableError, match="no row for architecture"):
        loaded.latencies(B)
    with pytest.raises(LatencyTableError, match="not found"):
        DeviceLatencyTable.from_csv(tmp_path / "missing.csv")


def test_helps_nasbench201_table_covers_the_space(shared_data_root: Path) -> None:
    path = shared_data_root / "hardware" / "help_nasbench201_latency.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    loaded = DeviceLatencyTable.from_csv(path)
    space = create_space("nasbench201")
    assert len(loaded) == space.size() == 15_625 and len(loaded.devices) == 21
    largest = space.encode(("nor_conv_3x3",) * 6)
    smallest = space.encode(("none",) * 6)
    for device in ("gold_6240", "pixel3", "titan_rtx_1"):
        assert loaded.latency(largest, device) > loaded.latency(smallest, device) > 0
