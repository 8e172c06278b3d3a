"""An H-Meta-NAS run on the command line: train a supernet, search it for a device and
budget, adapt a sub-network to a support folder and export it, with the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metarch.nas.spaces.elastic_conv import ElasticConvSpace
from tests.clitools import run_cli
from tests.fixtures import write_small_omniglot

CONFIG = """\
steps: 2
meta_batch: 2
method:
  name: hmetanas
  options: {meta_learner: fomaml, inner_lr: 0.1, steps: 1, eval_steps: 2, sandwich: 2}
model: {name: elastic-conv-supernet, options: {channels: 4, max_depth: 2}}
data: {train_set: background, val_set: evaluation, image_size: 16}
episodes: {ways: 3, shots: 1, queries: 1}
validation: {every: 2, episodes: 2}
checkpoint_every: 1
"""
SPACE = ElasticConvSpace(channels=4, max_depth=2, in_channels=1, image_size=16)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_omniglot(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    folder = tmp_path_factory.mktemp("hmetanas")
    (folder / "c.yaml").write_text(CONFIG)
    out = folder / "run"
    from metarch.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(
            [
                "train",
                "--config",
                str(folder / "c.yaml"),
                "--out",
                str(out),
                "--data-root",
                str(data_root),
            ]
        )
    assert info.value.code in (0, None)
    return out


def search_args(run: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--run",
        str(run),
        "--device",
        "torch-cpu",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--tasks",
        "2",
        "--evaluations",
        "6",
        "--population",
        "3",
        *extra,
    ]


def test_search_keeps_the_budget_and_measures_its_choice(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "search"
    code, stdout, stderr = run_cli(
        search_args(run, data_root, out, "--latency-ms", "50", "--params", "20000", "--json"),
        capsys,
    )
    assert code == 0, stderr
    record = json.loads(stdout)
    chosen = record["chosen"]
    assert chosen["predicted_latency_ms"] <= 50 and chosen["parameters"] <= 20000
    assert chosen["measured_latency_ms"] > 0
    front = json.loads((out / "front.json").read_text())
    assert len(front["candidates"]) == 6 and front["front"]
    assert all(c["costs"]["latency_ms"] <= 50 for c in front["candidates"])
    assert all(c["costs"]["parameters"] <= 20000 for c in front["candidates"])
    assert (out / "architecture.txt").read_text().strip() == chosen["architecture"]
    assert set(record["seconds"]) >= {"latency model", "search"}

    # The same seed searches the same networks.
    again = tmp_path / "again"
    args = search_args(run, data_root, again, "--latency-ms", "50", "--params", "20000")
    assert run_cli(args, capsys)[0] == 0
    first = [c["architecture"] for c in front["candidates"]]
    assert [
        c["architecture"] for c in json.loads((again / "front.json").read_text())["candidates"]
    ] == first


def test_within_alphabet_searches_score_on_tasks_of_one_alphabet(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metarch.data.resolve import load_pool
    from metarch.engine.evaluate import load_trained_learner
    from metarch.engine.search import validation_tasks

    trained = load_trained_learner(run, "last")
    tasks = validation_tasks(
        trained, data_root, tasks=40, seed=0, pool_spec="background", within_group=True
    )
    groups = load_pool("background", data_root, image_size=16).entry_groups
    drawn = groups[tasks.entries.numpy()]
    assert np.all(drawn == drawn[:, :1]) and len(set(drawn[:, 0].tolist())) == 2
    mixed = validation_tasks(trained, data_root, tasks=40, seed=0, pool_spec="background")
    assert not np.all(groups[mixed.entries.numpy()] == groups[mixed.entries.numpy()][:, :1])

    out = tmp_path / "within"
    args = search_args(run, data_root, out, "--latency-ms", "50", "--within-alphabet")
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert (out / "front.json").exists()


def write_support(folder: Path, classes: int) -> Path:
    generator = np.random.default_rng(0)
    for index in range(classes):
        (folder / f"class{index}").mkdir(parents=True)
        pixels = (generator.random((20, 20)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"class{index}" / "a.png")
    return folder


def test_adapt_picks_adapts_and_exports_a_subnetwork(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    support = write_support(tmp_path / "support", 3)
    out = tmp_path / "adapted"
    code, stdout, stderr = run_cli(
        [
            "adapt",
            "--run",
            str(run),
            "--device",
            "torch-cpu",
            "--latency-ms",
            "50",
            "--support",
            str(support),
            "--out",
            str(out),
            "--data-root",
            str(data_root),
            "--tasks",
            "2",
            "--evaluations",
            "4",
            "--json",
        ],
        capsys,
    )
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["predicted_latency_ms"] <= 50 and record["onnx_max_abs_difference"] < 1e-4
    assert 1 <= record["evaluated"] <= 4
    assert set(record["seconds"]) == {
        "load run",
        "latency model",
        "choose sub-network",
        "adapt",
        "export",
        "measure",
    }
    SPACE.decode(record["architecture"])
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    images = np.random.default_rng(1).random((5, 1, 16, 16), dtype=np.float32)
    (logits,) = session.run(None, {"input": images})
    assert logits.shape == (5, 3)
    # Each image is classified alone: the exported model is not transductive.
    (one,) = session.run(None, {"input": images[:1]})
    assert np.allclose(one, logits[:1], atol=1e-5)


def test_adapt_keeps_to_its_time_limit_by_evaluating_fewer_subnetworks(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = write_support(tmp_path / "support", 3)
    args = ["adapt", "--run", str(run), "--device", "torch-cpu", "--latency-ms", "50"]
    args += ["--support", str(support), "--out", str(tmp_path / "a"), "--data-root"]
    args += [str(data_root), "--tasks", "2", "--evaluations", "4", "--json"]
    # A limit spent before the search starts: one sub-network is evaluated and chosen.
    code, stdout, stderr = run_cli([*args, "--time-limit", "0.001"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["evaluated"] == 1
    code, stdout, stderr = run_cli([*args, "--time-limit", "0"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["evaluated"] == 4


@pytest.mark.parametrize(
    ("classes", "words"), [(1, "at least 2 class folders, found 1"), (4, "use at most 3")]
)
def test_adapt_refuses_a_support_folder_that_is_no_task_for_the_run(
    run: Path,
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    classes: int,
    words: str,
) -> None:
    support = write_support(tmp_path / "support", classes)
    out = tmp_path / "adapted"
    args = ["adapt", "--run", str(run), "--device", "torch-cpu", "--latency-ms", "50"]
    args += ["--support", str(support), "--out", str(out), "--data-root", str(data_root)]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and words in stderr and str(support) in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--latency-ms", "0.0001"], "smallest network"),
        (["--latency-ms", "-1"], "must be positive"),
    ],
)
def test_search_refuses_budgets_it_cannot_meet(
    run: Path,
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    words: str,
) -> None:
    code, _, stderr = run_cli(search_args(run, data_root, tmp_path / "s", *extra), capsys)
    assert code == 2 and words in stderr
    assert not (tmp_path / "s" / "front.json").exists()


def test_unknown_devices_and_other_runs_are_named(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = search_args(run, data_root, tmp_path / "s")
    args[args.index("torch-cpu")] = "pixel3"
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "not a local device" in stderr and "--table" in stderr
    config = tmp_path / "p.yaml"
    config.write_text(
        "steps: 1\nmeta_batch: 1\nmodel: {name: conv4, options: {hidden: 4}}\n"
        "data: {train_set: background, val_set: evaluation, image_size: 16}\n"
        "episodes: {ways: 3, shots: 1, queries: 1}\nmethod: {name: protonet}\n"
    )
    other = tmp_path / "protonet"
    code, _, err = run_cli(
        ["train", "--config", str(config), "--out", str(other), "--data-root", str(data_root)],
        capsys,
    )
    assert code == 0, err
    code, _, stderr = run_cli(search_args(other, data_root, tmp_path / "s2"), capsys)
    assert code == 2 and "needs an H-Meta-NAS run" in stderr


NB201_CONFIG = CONFIG.replace(
    "model: {name: elastic-conv-supernet, options: {channels: 4, max_depth: 2}}",
    "model: {name: nasbench201-supernet, options: {channels: 2, cells_per_stage: 1}}",
)


def write_device_table(path: Path) -> Path:
    """A HELP-form table of every NAS-Bench-201 cell on two made-up devices: 1 ms plus
    1 ms per 3x3 convolution ("phone") or per operation that is not none ("gpu")."""
    from metarch.nas.spaces.nasbench201 import NASBench201Space

    space = NASBench201Space()
    lines = ["index,arch,phone,gpu"]
    for index, cell in enumerate(space.enumerate()):
        convs = sum(op == "nor_conv_3x3" for op in cell)
        ops = sum(op != "none" for op in cell)
        lines.append(f"{index},{space.encode(cell)},{1 + convs},{1 + ops}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_nasbench201_supernet_is_searched_by_a_real_device_table(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(NB201_CONFIG)
    run = tmp_path / "run"
    train = ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run)]
    code, _, stderr = run_cli([*train, "--data-root", str(data_root)], capsys)
    assert code == 0, stderr
    table = write_device_table(tmp_path / "devices.csv")
    args = search_args(run, data_root, tmp_path / "s", "--latency-ms", "3.5", "--json")
    args[args.index("torch-cpu")] = "phone"
    args += ["--table", str(table)]

    # This run's macro is not the benchmark's whose latencies the table holds: refused...
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "--proxy-table" in stderr and "benchmark's macro" in stderr
    # ...unless asked for, and then the record says the latencies are a proxy.
    code, stdout, stderr = run_cli([*args, "--proxy-table"], capsys)
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["chosen"]["predicted_latency_ms"] <= 3.5
    assert record["chosen"]["architecture"].count("nor_conv_3x3") <= 2
    assert record["chosen"]["measured_latency_ms"] is None  # not a local device
    assert "rank this run's cells" in record["latency_proxy"]
    candidates = json.loads((tmp_path / "s" / "front.json").read_text())["candidates"]
    assert all(c["costs"]["latency_ms"] <= 3.5 for c in candidates)

    # A device the table lacks, and a budget under its fastest network, are named.
    unknown = [*args, "--proxy-table"]
    unknown[unknown.index("phone")] = "pixel3"
    code, _, stderr = run_cli(unknown, capsys)
    assert code == 2 and "not a column" in stderr and "phone, gpu" in stderr
    tight = [*args, "--proxy-table"]
    tight[tight.index("3.5")] = "0.5"
    code, _, stderr = run_cli(tight, capsys)
    assert code == 2 and "costs 1" in stderr


def test_a_device_table_of_another_space_is_refused(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = search_args(run, data_root, tmp_path / "s", "--latency-ms", "3")
    args[args.index("torch-cpu")] = "phone"
    args += ["--table", str(write_device_table(tmp_path / "devices.csv"))]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "another space" in stderr
