"""Hardware benchmarks: few-shot latency prediction on real devices, layer tables locally.

Two parts, each written into one report (``--part`` runs one; a report given with
``--merge-into`` keeps the other part's results):

``fewshot``: HELP's protocol on the shared tables (``../shared/data/hardware/``, measured
whole-network latencies of real GPUs, CPUs and phones): meta-train on 1080ti_*, silver_*,
samsung_*, pixel3 and essential_ph_1, pick the iteration on titanx_* and gold_6240, adapt
to each remaining device of the file from 10 networks (chosen by the seed) and rank all its
other networks. Several seeds; per device the mean and spread of Spearman and Kendall.
Side by side, on the same devices and networks: FLOPs (NAS-Bench-201: the rank of the
networks' FLOPs, no device data at all) and a ridge regression on the same one-hot
architecture tokens fitted to the same 10 networks (few-shot without meta-learning).

``layers``: for each space (NAS-Bench-201; the Conv-4-like ``elastic-conv``) and local
runtime (PyTorch eager, ONNX Runtime, OpenVINO; one thread), profile the space layer by
layer, then measure 200 random networks end to end (plus 10 that calibrate the models) and
score the layer table, FLOPs and parameters as latency models; measure the 200 networks
again (the "retest": how well the truth predicts itself, a ceiling for any model); and
what profiling cost against measuring every network of the space. Everything is timed in
interleaved rounds, each layer or network keeping its fastest round.

Usage::

    python benchmarks/hardware.py --data-root ../shared/data [--part fewshot|layers]
        [--seeds 0 1 2] [--iterations 1000] [--samples 200] [--rounds 5]
        [--spaces nasbench201 elastic-conv] [--publish | --out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (
    add_output_arguments,
    command_line,
    machine,
    output_path,
    write_json,
)

SPACES = {"nasbench201": "help_nasbench201_latency.csv", "fbnet": "help_fbnet_latency.csv"}
TRAIN = ["1080ti_*", "silver_*", "samsung_*", "pixel3", "essential_ph_1"]
VALIDATION = ["titanx_*", "gold_6240"]
#: HELP's reported mean Spearman on its own unseen devices (NeurIPS 2021, Table 2), which
#: are not in the shared files: anchors, not a side-by-side comparison.
ANCHORS = {
    "nasbench201": {"HELP": 0.932, "FLOPs": 0.787, "BRP-NAS (900 samples)": 0.789},
    "fbnet": {"HELP": 0.910, "MAML": 0.736, "Meta-SGD": 0.806},
}
RUNTIMES = ["torch-cpu", "onnxruntime-cpu", "openvino-cpu"]


def nasbench201_flops() -> dict[str, float]:
    """FLOPs of every NAS-Bench-201 network (C=16, N=5, 32x32), summed over its layers."""
    from metarch.models.cost import flops_per_image
    from metarch.nas import create_space

    space = create_space("nasbench201")
    per_layer = {
        layer.key: flops_per_image(layer.build(), layer.input_shape)
        for layer in space.layer_catalogue()
    }
    return {
        space.encode(a): float(sum(per_layer[layer.key] for layer in space.layers(a)))
        for a in space.enumerate()
    }


def ridge_spearman(predictor: Any, table: Any, device: str, alpha: float = 1.0) -> float:
    """Spearman of a ridge regression on tokens fitted to the device's reference networks."""
    from metarch.hardware.check import score_predictions

    reference = predictor.reference
    others = [a for a in table if a not in set(reference)]
    x = predictor.tokens.encode(reference).double().numpy()
    y = np.log([table.latency(a, device) for a in reference])
    mean = y.mean()
    weights = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (y - mean))
    predicted = predictor.tokens.encode(others).double().numpy() @ weights + mean
    measured = [table.latency(a, device) for a in others]
    return score_predictions(list(predicted), measured).spearman


def run_fewshot(args: argparse.Namespace) -> dict[str, Any]:
    from metarch.hardware import DeviceLatencyTable
    from metarch.hardware.check import score_predictions
    from metarch.hardware.fewshot import FewShotLatencyPredictor, FewShotSettings, pick_devices

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for space, file in SPACES.items():
        table = DeviceLatencyTable.from_csv(Path(args.data_root) / "hardware" / file)
        train, validation = pick_devices(table, TRAIN), pick_devices(table, VALIDATION)
        test = [d for d in table.devices if d not in train + validation]
        flops = nasbench201_flops() if space == "nasbench201" else None
        runs = []
        for seed in args.seeds:
            started = time.process_time()
            settings = FewShotSettings(seed=seed, iterations=args.iterations)
            predictor = FewShotLatencyPredictor.create(table, train, settings)
            predictor.meta_train(table, validation)
            seconds = time.process_time() - started
            devices = {}
            for device in test:
                ours = predictor.evaluate(table, device)
                row = {
                    "spearman": ours["spearman"],
                    "kendall": ours["kendall"],
                    "ridge_spearman": ridge_spearman(predictor, table, device),
                }
                if flops is not None:
                    others = [a for a in table if a not in set(predictor.reference)]
                    row["flops_spearman"] = score_predictions(
                        [flops[a] for a in others], [table.latency(a, device) for a in others]
                    ).spearman
                devices[device] = row
            runs.append(
                {
                    "seed": seed,
                    "meta_train_cpu_seconds": seconds,
                    "best_validation": max(h["validation_spearman"] for h in predictor.history),
                    "devices": devices,
                }
            )
            print(f"{space} seed {seed}: {seconds:.0f} CPU s", flush=True)
        results[space] = {
            "table": f"../shared/data/hardware/{file}",
            "train_devices": train,
            "validation_devices": validation,
            "test_devices": test,
            "networks": len(table),
            "samples": FewShotSettings().samples,
            "iterations": args.iterations,
            "anchors": ANCHORS[space],
            "runs": runs,
            "summary": summarise(runs, test),
        }
    return results


def summarise(runs: list[dict[str, Any]], devices: list[str]) -> dict[str, Any]:
    """Per device and overall: mean and standard deviation over seeds of every score."""
    keys = [k for k in runs[0]["devices"][devices[0]]]
    per_device = {}
    for device in devices:
        per_device[device] = {
            key: {
                "mean": statistics.fmean(r["devices"][device][key] for r in runs),
                "std": statistics.pstdev(r["devices"][device][key] for r in runs),
            }
            for key in keys
        }
    overall = {}
    for key in keys:
        means = [statistics.fmean(r["devices"][d][key] for d in devices) for r in runs]
        overall[key] = {"mean": statistics.fmean(means), "std": statistics.pstdev(means)}
    return {"devices": per_device, "overall": overall}


#: Spaces of the layer-table benchmark: NAS-Bench-201 as the benchmark builds it, and a
#: Conv-4-like space (every network a sequence of convolution layers) on the same images.
LAYER_SPACES: dict[str, dict[str, Any]] = {
    "nasbench201": {},
    "elastic-conv": {"in_channels": 3, "image_size": 32},
}


def run_layers(args: argparse.Namespace) -> dict[str, Any]:
    from metarch.hardware.check import check_latency_models, score_predictions
    from metarch.hardware.devices import Measurement, create_device
    from metarch.hardware.lut import LayerLatencyTable, profile_layers
    from metarch.hardware.predictors import FlopsModel, LayerTableModel, ParamsModel
    from metarch.nas import create_space

    how = Measurement(warmup=5, repeats=args.repeats, rounds=args.rounds)
    spaces: dict[str, Any] = {}
    for space_name in args.spaces:
        space = create_space(space_name, **LAYER_SPACES[space_name])
        results: dict[str, Any] = {}
        for name in args.runtimes:
            device = create_device(name, threads=1)
            reason = device.unavailable()
            if reason is not None:
                results[name] = {"error": reason}
                continue
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                profile_layers(space, device, Path(folder) / "t.json", how=how)
                profile_seconds = time.perf_counter() - started
                table = LayerLatencyTable.load(Path(folder) / "t.json")
            layer_table = LayerTableModel(space, table=table)
            models = {
                "layer-table": layer_table,
                "flops": FlopsModel(space),
                "params": ParamsModel(space),
            }
            started = time.perf_counter()
            report = check_latency_models(
                space, device, models, samples=args.samples, calibration=10, seed=0, how=how
            )
            measure_seconds = time.perf_counter() - started
            networks = [n for n in report["networks"] if not n["calibration"]]
            # The same networks measured again: how reproducible the truth itself is.
            again = device.measure_many(
                [
                    (space.build(space.decode(n["architecture"])), space.input_shape)
                    for n in networks
                ],
                how,
            )
            retest = score_predictions(
                [t.median_ms for t in again], [n["measured_ms"] for n in networks]
            )
            per_network = measure_seconds / len(report["networks"])
            results[name] = {
                "device": report["device"],
                "layers": len(table.layers),
                "profile_seconds": profile_seconds,
                "measure_seconds_per_network": per_network,
                "measure_all_seconds_estimate": per_network * (space.size() or 0),
                "scores": report["scores"],
                "retest": retest.to_json(),
                "calibration": {
                    "scale": layer_table.scale,
                    "offset_ms": layer_table.offset_ms,
                },
                "median_network_ms": statistics.median(n["measured_ms"] for n in networks),
                "networks": report["networks"],
            }
            print(
                f"{space_name} {name}: {report['scores']['layer-table']} retest {retest}",
                flush=True,
            )
        spaces[space_name] = {"settings": space.settings(), "runtimes": results}
    return {
        "samples": args.samples,
        "calibration": 10,
        "measurement": {"warmup": how.warmup, "repeats": how.repeats, "rounds": how.rounds},
        "spaces": spaces,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--part", choices=["fewshot", "layers"], action="append")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES)
    parser.add_argument("--spaces", nargs="+", default=list(LAYER_SPACES), choices=LAYER_SPACES)
    parser.add_argument("--merge-into", default=None, help="a report whose other parts to keep")
    add_output_arguments(parser, "hardware")
    args = parser.parse_args()
    parts = args.part or ["fewshot", "layers"]
    out = output_path(args, "hardware")
    previous = Path(args.merge_into or out)
    report: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    report |= {"benchmark": "hardware", "machine": machine()}
    commands = dict(report.get("commands", {}))
    if "fewshot" in parts:
        report["fewshot"] = run_fewshot(args)
        commands["fewshot"] = command_line()
    if "layers" in parts:
        report["layers"] = run_layers(args)
        commands["layers"] = command_line()
    report["commands"] = commands
    write_json(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
