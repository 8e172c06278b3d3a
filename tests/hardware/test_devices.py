"""Local devices measure real networks; ONNX export matches PyTorch; the CLI drives both."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import pytest
import torch

from metarch.hardware.devices import (
    LOCAL_DEVICES,
    DeviceError,
    LocalDevice,
    Measurement,
    Runner,
    create_device,
)
from metarch.hardware.lut import LayerLatencyTable
from metarch.hardware.onnx import OnnxError, export_onnx, export_onnx_many, max_abs_difference
from metarch.models.norm import MetaBatchNorm2d
from metarch.nas import create_space
from tests.clitools import run_cli

SMALL = ["--space-option", "channels=4", "--space-option", "cells_per_stage=1"]
QUICK = ["--warmup", "0", "--repeats", "2"]


def network() -> torch.nn.Module:
    space = create_space("nasbench201", channels=4, cells_per_stage=1, image_size=16)
    return space.build(space.sample(random.Random(0)), num_classes=5)


def test_devices_are_registered_with_their_settings() -> None:
    assert {"torch-cpu", "torch-cuda", "onnxruntime-cpu", "openvino-cpu"} <= set(LOCAL_DEVICES)
    device = create_device("torch-cpu", threads=2, channels_last=True)
    assert device.settings() == {"threads": 2, "channels_last": True}
    assert device.describe() == "torch-cpu (threads=2, channels_last=True)"


@pytest.mark.parametrize("name", ["torch-cpu", "onnxruntime-cpu", "openvino-cpu"])
def test_local_runtimes_time_a_network_and_leave_it_as_it_was(name: str) -> None:
    if name == "openvino-cpu" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'metarch[openvino]')")
    model = network().train()
    threads = torch.get_num_threads()
    timing = create_device(name).measure(model, (3, 16, 16), Measurement(1, 3))
    assert timing.median_ms > 0 and timing.repeats == 3
    assert model.training and torch.get_num_threads() == threads


def test_rounds_interleave_modules_and_keep_each_ones_fastest_round() -> None:
    class SlowFirstRound(LocalDevice):
        """Every module's calls take 3 ms until the device has run 8 calls in all."""

        def __init__(self) -> None:
            self.calls = 0

        @contextmanager
        def runner(
            self, module: torch.nn.Module, input_shape: tuple[int, ...], batch: int
        ) -> Iterator[Runner]:
            def call() -> None:
                self.calls += 1
                if self.calls <= 8:
                    time.sleep(0.003)

            yield Runner(call)

    device = SlowFirstRound()
    seen: list[tuple[int, int]] = []
    modules = [(torch.nn.Identity(), (1,)), (torch.nn.Identity(), (1,))]
    timings = device.measure_many(
        modules, Measurement(warmup=1, repeats=3, rounds=2), on_timed=lambda *a: seen.append(a)
    )
    # Round one (4 calls per module) was slow for both; round two was fast and is kept.
    assert device.calls == 16 and seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(timing.median_ms < 2.0 and timing.repeats == 3 for timing in timings)
    with pytest.raises(DeviceError, match="rounds >= 1"):
        Measurement(rounds=0)


def test_channels_last_runs_the_same_network() -> None:
    device = create_device("torch-cpu", channels_last=True)
    assert device.measure(network(), (3, 16, 16), Measurement(0, 1)).median_ms > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_named() -> None:
    device = create_device("torch-cuda")
    assert device.unavailable() == "no CUDA GPU (torch.cuda.is_available() is False)"
    with pytest.raises(DeviceError, match="torch-cuda cannot measure here: no CUDA GPU"):
        device.measure(network(), (3, 16, 16))


def test_the_onnx_model_computes_what_pytorch_does() -> None:
    model = network()
    exported = export_onnx(model, (3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    assert max_abs_difference(model, exported, x) < 1e-4


def test_meta_batch_norms_export_folded_into_their_convolutions() -> None:
    # MetaBatchNorm2d slices its statistics by the input's width; exported as it is, the
    # tracer kept that shape arithmetic and the batch norm (35 nodes for one layer).
    space = create_space("elastic-conv", channels=4, max_depth=2, image_size=16)
    model = space.build(space.largest(), num_classes=5)
    assert any(isinstance(m, MetaBatchNorm2d) for m in model.modules())
    graph = onnx.load_model_from_string(export_onnx(model, (3, 16, 16))).graph
    operations = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in operations
    assert "Shape" not in operations
    assert "Conv" in operations


def test_modules_exported_together_are_the_modules_exported_alone() -> None:
    space = create_space("elastic-conv", channels=4, max_depth=2, image_size=16)
    layers = space.layer_catalogue()[:5] + space.layer_catalogue()[-3:]
    modules = [(layer.build(), layer.input_shape) for layer in layers]
    together = export_onnx_many(modules)
    assert len(together) == len(modules)
    for (module, shape), model in zip(modules, together, strict=True):
        graph = onnx.load_model_from_string(model).graph
        assert [v.name for v in graph.input] == ["input"]
        assert [v.name for v in graph.output] == ["output"]
        alone = onnx.load_model_from_string(export_onnx(module, shape)).graph
        assert [n.op_type for n in graph.node] == [n.op_type for n in alone.node]
        x = torch.rand(3, *shape)  # the batch stays free
        assert max_abs_difference(module, model, x) < 1e-4


def test_a_module_that_cannot_be_exported_is_named_among_many() -> None:
    class Unexportable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            singular: torch.Tensor = torch.linalg.svd(x).S
            return singular

    with pytest.raises(OnnxError, match="cannot export Unexportable to ONNX"):
        export_onnx_many([(network(), (3, 16, 16)), (Unexportable(), (3, 16, 16))])


def test_the_cli_lists_devices_profiles_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["hardware", "devices", "--json"], capsys)
    assert code == 0
    rows = {row["device"]: row for row in json.loads(out)}
    assert rows["torch-cpu"]["available"] and rows["torch-cpu"]["settings"]["threads"] == 1

    table = tmp_path / "lut.json"
    profile = ["hardware", "profile", "--space", "nasbench201", "--input", "3x16x16"]
    code, out, _ = run_cli([*profile, *SMALL, *QUICK, "--out", str(table), "--json"], capsys)
    assert code == 0, out
    assert json.loads(out)["layers"] == len(LayerLatencyTable.load(table).layers)
    assert LayerLatencyTable.load(table).space_settings["image_size"] == 16

    check = ["hardware", "check", "--space", "nasbench201", "--input", "3x16x16"]
    args = [*check, *SMALL, *QUICK, "--table", str(table), "--samples", "4", "--calibration"]
    code, out, _ = run_cli([*args, "2", "--json", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0, out
    scores = json.loads(out)["scores"]
    assert set(scores) == {"layer-table", "flops", "params"}
    assert all(s["networks"] == 4 for s in scores.values())
    assert len(json.loads((tmp_path / "r.json").read_text())["networks"]) == 6


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device-option", "threads=0"], "--device-option.threads"),
        (["--device-option", "speed"], "expected KEY=VALUE"),
        (["--input", "3x16x8"], "square images"),
        (["--input", "three"], "expected CxHxW"),
        (["--space", "nasbench999"], "unknown search space"),
    ],
)
def test_bad_profile_arguments_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    base = ["hardware", "profile", "--space", "nasbench201", "--out", str(tmp_path / "t.json")]
    code, out, err = run_cli([*base, *args], capsys)
    assert code != 0 and words in out + err
    assert not (tmp_path / "t.json").exists()
