"""Backbones: shapes, registry, functional use under vmap, and MAML on ResNet-12."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarch.data.episodes import EpisodeBatch
from metarch.meta.maml import MAML
from metarch.models import MODELS, FewShotClassifier, create_model, feature_dim
from metarch.models.norm import (
    BatchNormContext,
    MetaBatchNorm2d,
    RecordedStatistics,
    batch_norm_context,
    name_norm_layers,
)
from metarch.models.resnet12 import ResidualBlock, ResNet12
from metarch.registry import UnknownNameError

SMALL = (8, 16, 16, 32)


def _images(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "features"),
    [
        ("conv4", {}, (2, 1, 28, 28), 64),
        ("conv4-strided", {}, (2, 1, 28, 28), 64),
        ("conv4", {"in_channels": 3}, (2, 3, 84, 84), 64 * 5 * 5),
        ("resnet12", {"widths": SMALL}, (2, 3, 84, 84), 32),
        ("resnet12", {"widths": SMALL, "avg_pool": False}, (2, 3, 84, 84), 32 * 5 * 5),
        ("resnet12", {"widths": SMALL, "in_channels": 1}, (2, 1, 28, 28), 32),
    ],
)
def test_feature_shapes(
    name: str, kwargs: dict[str, Any], shape: tuple[int, ...], features: int
) -> None:
    model = create_model(name, **kwargs)
    out = model(_images(*shape))
    assert out.shape == (shape[0], features)
    assert torch.isfinite(out).all()
    assert feature_dim(model, shape[1:]) == features  # type: ignore[arg-type]


def test_resnet12_default_size() -> None:
    pooled = create_model("resnet12")
    flat = create_model("resnet12", avg_pool=False)
    count = sum(p.numel() for p in pooled.parameters())
    # 12.41M in convolutions (no biases) + 9.5k in norms: the ~12.4M usually quoted.
    assert 12_300_000 < count < 12_500_000, count
    assert count == sum(p.numel() for p in flat.parameters())
    assert feature_dim(pooled, (3, 84, 84)) == 640
    assert feature_dim(flat, (3, 84, 84)) == 640 * 5 * 5


def test_resnet12_structure() -> None:
    model = ResNet12(widths=SMALL, steps=2, per_step_norm=True)
    norms = [m for m in model.modules() if isinstance(m, MetaBatchNorm2d)]
    assert len(norms) == 4 * 4  # three convolutions and a shortcut per block
    assert all(norm.slots == 3 for norm in norms)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 * 4
    assert all(conv.bias is None for conv in convs)
    assert model.out_channels == 32
    with pytest.raises(ValueError, match="four blocks"):
        ResNet12(widths=(8, 16, 32))


def test_resnet12_residual_path() -> None:
    # With the main path's last norm zeroed, a block is LeakyReLU(shortcut) then max-pool.
    model = ResNet12(widths=(4, 4, 4, 4), avg_pool=False).eval()
    block = model.blocks[0]
    assert isinstance(block, ResidualBlock)
    with torch.no_grad():
        block.norm3.weight.zero_()
        block.norm3.bias.zero_()
    x = _images(2, 3, 8, 8) - 0.5
    expected = nn.functional.max_pool2d(nn.functional.leaky_relu(block.shortcut(x), 0.1), 2)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize(
    ("name", "kwargs", "image_shape", "features"),
    [
        ("conv4", {}, (1, 28, 28), 64),
        ("resnet12", {"widths": SMALL}, (3, 20, 20), 32),
        ("resnet12", {"widths": SMALL, "avg_pool": False}, (3, 40, 40), 32 * 2 * 2),
    ],
)
def test_classifier_sizes_its_head(
    name: str, kwargs: dict[str, Any], image_shape: tuple[int, int, int], features: int
) -> None:
    backbone = create_model(name, in_channels=image_shape[0], **kwargs)
    classifier = FewShotClassifier(backbone, ways=5, image_shape=image_shape)
    assert classifier.head.in_features == features
    assert classifier.head.out_features == 5
    assert classifier(_images(3, *image_shape)).shape == (3, 5)


def test_registry() -> None:
    assert {"conv4", "conv4-strided", "resnet12"} <= set(MODELS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'resnet12'") as info:
        create_model("resnet-12")
    known = (
        "known: conv4, conv4-strided, elastic-conv, elastic-conv-supernet, metanas-genotype, "
        "metanas-search, mlp, nasbench201-genotype, nasbench201-search, nasbench201-supernet, "
        "resnet12"
    )
    assert known in str(info.value)
    assert isinstance(info.value, KeyError)


# -- functional use ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "image_shape"),
    [
        ("conv4", {"hidden": 8}, (1, 28, 28)),
        ("conv4-strided", {"hidden": 8}, (1, 28, 28)),
        ("resnet12", {"widths": SMALL}, (3, 20, 20)),
    ],
)
def test_vmap_over_tasks_with_per_task_parameters(
    name: str, kwargs: dict[str, Any], image_shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=image_shape[0], **kwargs).double()
    name_norm_layers(model)
    buffers = {key: b.clone() for key, b in model.named_buffers()}
    base = dict(model.named_parameters())
    tasks = 2
    # Distinct parameters per task, stacked along dim 0.
    stacked = {
        key: torch.stack([p.detach() + 0.01 * t * torch.randn_like(p) for t in range(tasks)])
        for key, p in base.items()
    }
    images = _images(tasks, 3, *image_shape, dtype=torch.float64)

    def one_task(
        params: dict[str, Tensor], x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        record = RecordedStatistics()
        with batch_norm_context(BatchNormContext(step=0, use_running=False, record=record)):
            out: Tensor = functional_call(model, {**params, **buffers}, (x,))
        return out, record.means, record.variances

    outs, means, variances = torch.func.vmap(one_task, in_dims=(0, 0))(stacked, images)
    assert len(means) == sum(isinstance(m, MetaBatchNorm2d) for m in model.modules())
    for t in range(tasks):
        out, mean, variance = one_task({k: v[t] for k, v in stacked.items()}, images[t])
        torch.testing.assert_close(outs[t], out)
        assert set(mean) == set(means)
        for key in mean:
            torch.testing.assert_close(means[key][t], mean[key])
            torch.testing.assert_close(variances[key][t], variance[key])
    # Nothing was written to the module's buffers.
    for key, b in model.named_buffers():
        torch.testing.assert_close(b, buffers[key], rtol=0, atol=0)


# -- MAML on ResNet-12 ---------------------------------------------------------------------


def _episode_batch(tasks: int, ways: int, image_shape: tuple[int, int, int]) -> EpisodeBatch:
    # 1-shot 1-query: one support and one query image per class.
    labels = torch.arange(ways).repeat(tasks, 1)
    ids = torch.arange(tasks * ways).reshape(tasks, ways)
    return EpisodeBatch(
        support_images=_images(tasks, ways, *image_shape, seed=1, dtype=torch.float64),
        support_labels=labels,
        query_images=_images(tasks, ways, *image_shape, seed=2, dtype=torch.float64),
        query_labels=labels.clone(),
        entries=ids,
        support_image_ids=ids,
        query_image_ids=ids + tasks * ways,
        task_indices=torch.arange(tasks),
    )


@pytest.mark.parametrize("norm_policy", ["batch", "per_step"])
def test_maml_vmap_and_loop_agree_on_resnet12(norm_policy: str) -> None:
    image_shape = (3, 20, 20)
    torch.manual_seed(0)
    backbone = create_model(
        "resnet12", widths=(4, 4, 4, 4), steps=1, per_step_norm=norm_policy == "per_step"
    )
    model = FewShotClassifier(backbone, ways=2, image_shape=image_shape).double()
    batch = _episode_batch(tasks=2, ways=2, image_shape=image_shape)

    learners = {
        batching: MAML(
            copy.deepcopy(model), inner_lr=0.1, steps=1, norm_policy=norm_policy, batching=batching
        )
        for batching in ("vmap", "loop")
    }
    metrics = {
        batching: learner.compute_meta_gradients(batch) for batching, learner in learners.items()
    }

    assert metrics["vmap"].tasks == metrics["loop"].tasks == 2
    assert metrics["vmap"].loss == pytest.approx(metrics["loop"].loss, abs=1e-10)
    assert metrics["vmap"].accuracy == metrics["loop"].accuracy
    vmapped = dict(learners["vmap"].model.named_parameters())
    looped = dict(learners["loop"].model.named_parameters())
    for key, param in vmapped.items():
        assert param.grad is not None and looped[key].grad is not None, key
        assert torch.isfinite(param.grad).all(), key
        torch.testing.assert_close(param.grad, looped[key].grad, rtol=0, atol=1e-10)
    assert any(float(p.grad.abs().max()) > 0 for p in vmapped.values() if p.grad is not None)
    # Recorded statistics (per_step only) reach the running buffers identically.
    looped_buffers = dict(learners["loop"].model.named_buffers())
    for key, buffer in learners["vmap"].model.named_buffers():
        torch.testing.assert_close(buffer, looped_buffers[key], rtol=0, atol=1e-10)
    changed = any(
        not torch.equal(buffer, dict(model.named_buffers())[key])
        for key, buffer in learners["vmap"].model.named_buffers()
    )
    assert changed == (norm_policy == "per_step")
