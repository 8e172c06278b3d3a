"""Conv-4: the four-block convolutional backbone of MAML and prototypical networks.

Each block is a 3x3 convolution with 64 filters, batch normalisation and ReLU, followed by
2x2 max-pooling (``pool="max"``, prototypical networks and MAML's mini-ImageNet model) or
done with stride 2 instead of pooling (``pool="stride"``, MAML's Omniglot model, which then
averages the last feature map over space). On 28x28 Omniglot both give 64 features; on
84x84 images the max-pool variant gives 64 x 5 x 5 = 1600 features.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.registry import PositiveInt

__all__ = ["Conv4", "ConvBlock"]


class ConvBlock(nn.Sequential):
    """3x3 convolution, batch normalisation, ReLU and optional 2x2 max-pooling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pool: Literal["max", "stride"],
        steps: int = 1,
        per_step_norm: bool = False,
    ) -> None:
        stride = 2 if pool == "stride" else 1
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            MetaBatchNorm2d(out_channels, steps=steps, per_step=per_step_norm),
            nn.ReLU(),
        ]
        if pool == "max":
            layers.append(nn.MaxPool2d(2, ceil_mode=False))
        super().__init__(*layers)


class Conv4(nn.Module):
    """Four :class:`ConvBlock` layers and a flatten: an image embedding.

    Args:
        in_channels: Image channels (1 for Omniglot, 3 for mini-ImageNet).
        hidden: Filters per block (64 in both papers).
        pool: ``"max"`` or ``"stride"`` (see the module docstring).
        steps: Inner steps (only matters with ``per_step_norm``).
        per_step_norm: Per-step batch-norm slots (MAML++).
    """

    def __init__(
        self,
        in_channels: PositiveInt = 1,
        hidden: PositiveInt = 64,
        *,
        pool: Literal["max", "stride"] = "max",
        steps: PositiveInt = 1,
        per_step_norm: bool = False,
    ) -> None:
        super().__init__()
        channels = [in_channels, hidden, hidden, hidden, hidden]
        self.blocks = nn.Sequential(
            *(
                ConvBlock(
                    channels[i],
                    channels[i + 1],
                    pool=pool,
                    steps=steps,
                    per_step_norm=per_step_norm,
                )
                for i in range(4)
            )
        )
        self.out_channels = hidden
        # MAML's strided network averages its last (2x2 on Omniglot) map over space.
        self.spatial_mean = pool == "stride"
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                assert module.bias is not None
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``(N, C, H, W)`` into features ``(N, D)``."""
        maps: Tensor = self.blocks(x)
        return maps.mean(dim=(2, 3)) if self.spatial_mean else maps.flatten(1)
