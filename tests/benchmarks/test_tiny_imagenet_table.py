"""The Tiny-ImageNet table is generated from its JSON, between markers, and says whether
each run had converged."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from tests.benchmarks import load_script


def _load_script() -> ModuleType:
    return load_script("tiny_imagenet_fs")


def row(config: str, accuracy: float, curve: list[tuple[int, float]]) -> dict[str, object]:
    return {
        "config": config,
        "task": f"5-way {config[-2]}-shot",
        "accuracy": accuracy,
        "ci95": 0.7,
        "input_shape": [3, 32, 32],
        "parameters": 113088,
        "flops_per_image": 28311552,
        "latency_ms": 0.6,
        "steps": curve[-1][0],
        "train_seconds_total": 3600.0,
        "validation": [{"step": s, "accuracy": a, "ci95": 1.0} for s, a in curve],
    }


def test_markdown_section_is_generated_between_markers(tmp_path: Path) -> None:
    script = _load_script()
    table = {
        "test_pool": "tiny_imagenet_fs_background:test",
        "episodes": 600,
        "queries": 15,
        "latency": "batch 1",
        "machine": {"cpu": "x86_64", "cores": 2, "torch": "2.13.0"},
        "commands": ["python benchmarks/tiny_imagenet_fs.py --configs x"],
        "rows": [
            row("tiny-imagenet-fs-protonet-conv4-5w5s", 55.0, [(200, 48.0), (800, 56.0)]),
            row("tiny-imagenet-fs-maml-conv4-5w1s", 33.0, [(200, 30.0), (600, 33.0), (800, 33.2)]),
        ],
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    target = tmp_path / "BENCHMARKS.md"
    target.write_text(f"# Benchmarks\n\nbefore\n\n{script.BEGIN}\nold\n{script.END}\n\nafter\n")
    script.write_markdown(target, path)
    text = target.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.endswith("\nafter\n")
    assert "old" not in text and text.count(script.BEGIN) == 1
    lines = [line for line in text.splitlines() if line.startswith("| tiny-imagenet-fs-")]
    # 1-shot rows first; each says whether validation still rose in the last quarter.
    assert lines[0].startswith("| tiny-imagenet-fs-maml-conv4-5w1s | 5-way 1-shot | 33.00 ± 0.70")
    assert "| +0.2 (flat) |" in lines[0] and "| +8.0 (rising) |" in lines[1]
    assert (tmp_path / "tiny_imagenet_fs_curves.png").stat().st_size > 1000
    # Generating twice changes nothing: the section is a function of the JSON.
    script.write_markdown(target, path)
    assert target.read_text() == text
