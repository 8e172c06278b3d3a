"""The NAS-Bench-201 space: strings, enumeration, the benchmark's own sizes, batching."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from metarch.meta import MAML
from metarch.nas import SEARCH_SPACES, ArchitectureError, create_space
from metarch.nas.spaces.nasbench201 import OPERATIONS, NASBench201Space
from tests.meta.helpers import flat_grad

BENCHMARK = NASBench201Space()
LARGEST = ("nor_conv_3x3",) * 6


def test_registered_and_stamped() -> None:
    assert SEARCH_SPACES.get("nasbench201") is NASBench201Space
    assert NASBench201Space.registered_name == "nasbench201"
    space = create_space("nasbench201", channels=8, cells_per_stage=1)
    assert isinstance(space, NASBench201Space) and space.channels == 8


def test_every_architecture_has_one_string_and_back() -> None:
    strings = {BENCHMARK.encode(arch) for arch in BENCHMARK.enumerate()}
    assert len(strings) == BENCHMARK.size() == 15_625
    for text in random.Random(0).sample(sorted(strings), 200):
        assert BENCHMARK.encode(BENCHMARK.decode(text)) == text
        assert BENCHMARK.from_json(BENCHMARK.to_json(BENCHMARK.decode(text))) == BENCHMARK.decode(
            text
        )
    assert BENCHMARK.encode(LARGEST) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
        "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    )


def test_strings_of_the_real_device_latency_table_decode(shared_data_root: Path) -> None:
    # The table's architectures are keyed by the benchmark's strings: each must decode,
    # and encode back to the very same string.
    path = shared_data_root / "hardware" / "help_nasbench201_latency.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(newline="") as file:
        strings = [row["arch"] for row in csv.DictReader(file)]
    assert len(set(strings)) == 15_625
    for text in strings:
        assert BENCHMARK.encode(BENCHMARK.decode(text)) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("|nor_conv_3x3~0|", "3 nodes"),
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation 'conv'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must come from node 0"),
        ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "|op~i|"),
    ],
)
def test_bad_strings_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ArchitectureError) as info:
        BENCHMARK.decode(text)
    assert words in str(info.value)


def test_the_benchmark_macro_has_the_benchmark_sizes() -> None:
    # NAS-Bench-201 (CIFAR-10): 0.073 M to 1.532 M parameters, 7.78 to 220.11 M
    # multiply-adds; ours counts FLOPs as 2 per multiply-add.
    largest = BENCHMARK.cost(LARGEST, num_classes=10)
    smallest = BENCHMARK.cost(("none",) * 6, num_classes=10)
    assert largest.parameters == 1_531_546 and smallest.parameters == 73_306
    assert round(largest.flops / 2e6, 2) == 220.12 and round(smallest.flops / 2e6, 2) == 7.78


def test_sampling_is_seeded_and_covers_the_operations() -> None:
    first = [BENCHMARK.sample(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(0)
    seen = {op for _ in range(50) for op in BENCHMARK.sample(rng)}
    assert seen == set(OPERATIONS)


def test_networks_meta_learn_task_batched_as_in_the_loop() -> None:
    # A small macro on 8x8 images: second-order MAML task-batched equals the loop.
    from tests.meta.helpers import make_batch

    space = NASBench201Space(channels=4, cells_per_stage=1, in_channels=1, image_size=12)
    architecture = space.decode(
        "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
    )
    grads = []
    for batching in ("loop", "batched"):
        torch.manual_seed(0)
        model = space.build(architecture, num_classes=3).double()
        learner = MAML(model, inner_lr=0.1, steps=2, batching=batching)
        learner.compute_meta_gradients(make_batch(tasks=3, ways=3))
        assert learner.batching == batching
        grads.append(flat_grad(list(model.parameters())))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-11)
