"""Layer latency tables and latency models: decomposition, files, resuming, prediction.

A fake device makes timings deterministic: a module "takes" 0.01 ms per parameter plus
0.1 ms per call, and a network's true latency is its layers' sum plus a constant, so the
claims below are exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from metarch.hardware import DeviceLatencyTable
from metarch.hardware.check import check_latency_models, distinct_samples, score_predictions
from metarch.hardware.devices import LocalDevice, Measurement, Runner
from metarch.hardware.lut import LayerLatencyTable, LayerTableError, profile_layers
from metarch.hardware.predictors import (
    DeviceTableModel,
    FlopsModel,
    LayerTableModel,
    ParamsModel,
)
from metarch.models.cost import count_parameters, flops_per_image
from metarch.nas import create_space
from metarch.utils.timing import Timing, summarise

#: What a whole network costs on the fake device beyond its layers.
NETWORK_OVERHEAD_MS = 0.5


def fake_ms(module: nn.Module) -> float:
    return 0.1 + 0.01 * count_parameters(module)


class FakeDevice(LocalDevice):
    """Deterministic 'latency' from parameter counts; counts its measurements."""

    registered_name = "fake"

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads
        self.calls = 0

    def latency(self, module: nn.Module) -> float:
        return fake_ms(module)

    @contextmanager
    def runner(
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> Iterator[Runner]:
        yield Runner(lambda: None)

    def measure_many(
        self,
        modules: Sequence[tuple[nn.Module, tuple[int, ...]]],
        how: Measurement | None = None,
        *,
        on_timed: Callable[[int, int], None] | None = None,
    ) -> list[Timing]:
        timings = []
        for index, (module, _) in enumerate(modules):
            self.calls += 1
            ms = self.latency(module)
            timings.append(Timing(ms, ms, ms, 0.0, 1, 0))
            if on_timed is not None:
                on_timed(index + 1, len(modules))
        return timings


def small_space() -> Any:
    return create_space("nasbench201", channels=4, cells_per_stage=2, image_size=8)


def test_the_layers_of_a_network_add_up_to_it() -> None:
    space = small_space()
    for seed in range(4):
        architecture = space.sample(random.Random(seed))
        network = space.build(architecture, num_classes=5)
        layers = space.layers(architecture, num_classes=5)
        assert sum(count_parameters(layer.build()) for layer in layers) == count_parameters(network)
        assert sum(flops_per_image(layer.build(), layer.input_shape) for layer in layers) == (
            flops_per_image(network, space.input_shape)
        )
        # 1 stem, 3 stages x 2 cells x (6 edges + 3 sums), 2 reductions, norm, pool, head.
        assert len(layers) == 1 + 3 * 2 * 9 + 2 + 3


def test_the_catalogue_holds_every_layer_once() -> None:
    space = small_space()
    catalogue = [layer.key for layer in space.layer_catalogue(num_classes=5)]
    assert len(catalogue) == len(set(catalogue)) == 1 + 3 * 6 + 2 + 3
    for architecture in distinct_samples(space, 30, seed=1):
        assert {layer.key for layer in space.layers(architecture, num_classes=5)} <= set(catalogue)


def test_slow_outliers_are_rejected_and_counted() -> None:
    timing = summarise([1.0, 1.01, 0.99, 1.02, 0.98, 9.0])
    assert timing.rejected == 1 and timing.repeats == 6
    assert timing.median_ms == pytest.approx(1.0) and timing.p90_ms < 1.1
    assert Timing.from_json(timing.to_json()) == timing


def test_a_profiled_table_round_trips_and_records_its_provenance(tmp_path: Path) -> None:
    space, device = small_space(), FakeDevice()
    table = profile_layers(space, device, tmp_path / "t.json", how=Measurement(0, 1))
    assert table.complete and device.calls == len(table.layers)
    loaded = LayerLatencyTable.load(tmp_path / "t.json")
    assert loaded.entries == table.entries and loaded.layers == table.layers
    document = json.loads((tmp_path / "t.json").read_text())
    assert document["format"] == "metarch-layer-latency-table" and document["version"] == 1
    assert document["device"]["device"] == "fake"
    assert {"cpu", "cores", "python", "date", "libraries", "settings"} <= set(document["device"])
    assert document["space"] == {"name": "nasbench201", "settings": space.settings()}


def test_an_interrupted_profile_resumes_with_only_the_missing_layers(tmp_path: Path) -> None:
    space, out = small_space(), tmp_path / "t.json"

    def stop_after_three(done: int, total: int, key: str) -> None:
        if done == 3:
            raise KeyboardInterrupt

    # Saved after every chunk of two layers: the kill in the second chunk loses it.
    with pytest.raises(KeyboardInterrupt):
        profile_layers(space, FakeDevice(), out, on_layer=stop_after_three, chunk=2)
    partial = LayerLatencyTable.load(out)
    assert len(partial.entries) == 2 and not partial.complete
    device = FakeDevice()
    table = profile_layers(space, device, out)
    assert table.complete and device.calls == len(table.layers) - 2
    # A table of another profile is refused, not overwritten.
    with pytest.raises(LayerTableError, match="another profile"):
        profile_layers(space, FakeDevice(threads=2), out)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda text: text.replace('"median_ms": 0.1', '"median_ms": 0.2', 1), "checksum"),
        (lambda text: text[: len(text) // 2], "not JSON"),
        (lambda text: text.replace('"version": 1', '"version": 9'), "version 9"),
        (lambda text: text.replace("metarch-layer-latency-table", "other"), "format"),
    ],
    ids=["edited", "truncated", "future-version", "other-format"],
)
def test_a_damaged_table_is_refused(tmp_path: Path, edit: Any, words: str) -> None:
    out = tmp_path / "t.json"
    profile_layers(small_space(), FakeDevice(), out)
    out.write_text(edit(out.read_text()))
    with pytest.raises(LayerTableError, match=words):
        LayerLatencyTable.load(out)


def test_a_missing_layer_or_another_space_is_named(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    table = profile_layers(small_space(), FakeDevice(), out)
    with pytest.raises(LayerTableError, match=r"'conv_7x7\|in=1' .*metarch hardware profile"):
        table.latency("conv_7x7|in=1")
    other = create_space("nasbench201", channels=8, cells_per_stage=2, image_size=8)
    with pytest.raises(LayerTableError, match="profiled for space nasbench201"):
        LayerTableModel(other, table=table)
    with pytest.raises(LayerTableError, match="num_classes=None, not nasbench201"):
        LayerTableModel(small_space(), 5, table=table)


def test_the_layer_table_predicts_an_additive_device_exactly(tmp_path: Path) -> None:
    space = small_space()
    table = profile_layers(space, FakeDevice(), tmp_path / "t.json")
    model = LayerTableModel(space, table=table)
    architectures = distinct_samples(space, 12, seed=3)
    truth = [
        sum(fake_ms(layer.build()) for layer in space.layers(a)) + NETWORK_OVERHEAD_MS
        for a in architectures
    ]
    model.fit(architectures[:2], truth[:2])
    assert model.offset_ms == pytest.approx(NETWORK_OVERHEAD_MS)
    predicted = [model.predict(a) for a in architectures]
    assert predicted == pytest.approx(truth)
    score = score_predictions(predicted[2:], truth[2:])
    assert score.within_10 == 100.0 and score.mape == pytest.approx(0.0, abs=1e-9)


def test_the_layer_table_calibrates_a_uniformly_slower_runtime_with_a_line(
    tmp_path: Path,
) -> None:
    space = small_space()
    table = profile_layers(space, FakeDevice(), tmp_path / "t.json")
    model = LayerTableModel(space, table=table)
    architectures = distinct_samples(space, 12, seed=4)
    sums = [model.layer_sum(a) for a in architectures]
    truth = [1.5 * total + 0.2 for total in sums]
    model.fit(architectures[:5], truth[:5])
    assert (model.scale, model.offset_ms) == pytest.approx((1.5, 0.2))
    assert [model.predict(a) for a in architectures] == pytest.approx(truth)
    # A network far smaller than the measured ones is not predicted to take no time.
    model.fit(architectures[:5], [total - min(sums[:5]) + 1e-3 for total in sums[:5]])
    assert min(model.predict(a) for a in architectures) > 0
    # A constant alone is kept where it predicts the left-out networks better.
    model.fit(architectures[:5], [total + 0.3 for total in sums[:5]])
    assert (model.scale, model.offset_ms) == pytest.approx((1.0, 0.3))


def test_check_scores_every_model_on_networks_it_did_not_calibrate_on(tmp_path: Path) -> None:
    space = small_space()

    class Additive(FakeDevice):
        def latency(self, module: nn.Module) -> float:
            return fake_ms(module) + 0.1 * len(list(module.modules()))

    table = profile_layers(space, FakeDevice(), tmp_path / "t.json")
    models = {
        "layer-table": LayerTableModel(space, table=table),
        "flops": FlopsModel(space),
        "params": ParamsModel(space),
    }
    report = check_latency_models(space, Additive(), models, samples=15, calibration=5, seed=2)
    assert report["samples"] == 15 and report["calibration"] == 5
    assert len(report["networks"]) == 20
    assert [n["calibration"] for n in report["networks"]].count(True) == 5
    assert len({n["architecture"] for n in report["networks"]}) == 20
    for score in report["scores"].values():
        assert score["networks"] == 15 and -1.0 <= score["kendall"] <= 1.0
    # Parameters rank this device's networks well (its cost grows with them).
    assert report["scores"]["params"]["spearman"] > 0.9


def test_rank_scores_of_known_predictions() -> None:
    perfect = score_predictions([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert perfect.spearman == pytest.approx(1.0) and perfect.kendall == pytest.approx(1.0)
    assert (perfect.mape, perfect.within_10) == (0.0, 100.0)
    reversed_ = score_predictions([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert reversed_.kendall == pytest.approx(-1.0)
    off = score_predictions([1.05, 2.5], [1.0, 2.0])
    assert off.within_10 == 50.0 and off.mape == pytest.approx(15.0)


def test_proxies_are_lines_through_the_measured_networks() -> None:
    space = small_space()
    architectures = distinct_samples(space, 6, seed=4)
    model = FlopsModel(space)
    truth = [2e-6 * space.cost(a).flops + 0.3 for a in architectures]
    model.fit(architectures, truth)
    assert [model.predict(a) for a in architectures] == pytest.approx(truth)


def test_the_device_table_model_looks_networks_up(tmp_path: Path) -> None:
    space = small_space()
    a, b = distinct_samples(space, 2, seed=5)
    path = tmp_path / "latency.csv"
    path.write_text(f"arch,phone\n{space.encode(a)},3.5\n{space.encode(b)},7\n")
    model = DeviceTableModel(space, table=DeviceLatencyTable.from_csv(path), device="phone")
    assert (model.predict(a), model.predict(b)) == (3.5, 7.0)
    with pytest.raises(Exception, match="no device 'gpu'"):
        DeviceTableModel(space, table=DeviceLatencyTable.from_csv(path), device="gpu")
