"""ResNet-12: the residual backbone of TADAM and MetaOptNet.

As in Oreshkin et al. (2018) and Lee et al. (2019): four residual blocks, each three 3x3
convolutions with batch normalisation and LeakyReLU(0.1), a 1x1 convolution + batch
normalisation shortcut, and 2x2 max-pooling. The last convolution's activation comes
after the shortcut is added. With the default widths (64, 160, 320, 640) of MetaOptNet
(TADAM used 64, 128, 256, 512) and 3 input channels the network has about 12.4M
parameters; an 84x84 image leaves a 640 x 5 x 5 map after the four blocks.

Features (``avg_pool``):
    ``True`` (default): global average pooling, ``(N, 640)``, as in TADAM and most later
        work (RFS, Meta-Baseline, FEAT). The width does not depend on the image size and a
        linear head on top stays small, which matters when the inner loop adapts it.
    ``False``: the flattened map, ``(N, 640 * 5 * 5) = (N, 16000)`` on 84x84, as fed to
        MetaOptNet's SVM / ridge-regression heads.

Every normalisation is a :class:`~metarch.models.norm.MetaBatchNorm2d`, so the
meta-learners' batch-norm policies (batch, per-step, frozen) apply. DropBlock, which
MetaOptNet uses in the last two blocks, is omitted: it is a parameter-free training-time
regulariser whose random masks would have to be threaded through the functional inner
loop and ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.registry import PositiveInt

__all__ = ["ResNet12", "ResidualBlock"]

#: LeakyReLU slope of the original implementations.
NEGATIVE_SLOPE = 0.1


class ResidualBlock(nn.Module):
    """Three 3x3 conv + norm + LeakyReLU layers, a 1x1 conv + norm shortcut, 2x2 max-pool.

    Args:
        in_channels: Input channels.
        out_channels: Channels of all three convolutions and the shortcut.
        steps: Inner steps (only matters with ``per_step_norm``).
        per_step_norm: Per-step batch-norm slots (MAML++).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        steps: int = 1,
        per_step_norm: bool = False,
    ) -> None:
        super().__init__()

        def norm() -> MetaBatchNorm2d:
            return MetaBatchNorm2d(out_channels, steps=steps, per_step=per_step_norm)

        # No convolution bias: every convolution is followed by a norm with its own shift.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = norm()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = norm()
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm3 = norm()
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm(),
        )
        # Not in place: the pre-activation tensors are needed for higher-order gradients.
        self.activation = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C_in, H, W)`` to ``(N, C_out, H // 2, W // 2)``."""
        out = self.activation(self.norm1(self.conv1(x)))
        out = self.activation(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out = self.activation(out + self.shortcut(x))
        pooled: Tensor = self.pool(out)
        return pooled


class ResNet12(nn.Module):
    """Four :class:`ResidualBlock` layers and a pooled or flattened output: an image embedding.

    Args:
        in_channels: Image channels (3 for mini-ImageNet, the usual setting).
        widths: Channels of the four blocks.
        avg_pool: Global average pooling (``(N, widths[-1])``) instead of flattening the
            final map (see the module docstring).
        steps: Inner steps (only matters with ``per_step_norm``).
        per_step_norm: Per-step batch-norm slots (MAML++).

    Raises:
        ValueError: If ``widths`` does not have four entries.
    """

    def __init__(
        self,
        in_channels: PositiveInt = 3,
        widths: Sequence[PositiveInt] = (64, 160, 320, 640),
        *,
        avg_pool: bool = True,
        steps: PositiveInt = 1,
        per_step_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has four blocks; got {len(widths)} widths {widths}")
        channels = (in_channels, *widths)
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(
                    channels[i],
                    channels[i + 1],
                    steps=steps,
                    per_step_norm=per_step_norm,
                )
                for i in range(4)
            )
        )
        self.widths = widths
        self.avg_pool = avg_pool
        self.out_channels = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # As in MetaOptNet's implementation.
                nn.init.kaiming_normal_(
                    module.weight, a=NEGATIVE_SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``(N, C, H, W)`` into features ``(N, D)``."""
        maps: Tensor = self.blocks(x)
        if self.avg_pool:
            return maps.mean(dim=(2, 3))
        return maps.flatten(1)
