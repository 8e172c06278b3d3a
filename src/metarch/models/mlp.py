"""A fully connected network, for regression tasks such as MAML's sinusoids."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from metarch.registry import PositiveInt

__all__ = ["MLP"]


class MLP(nn.Module):
    """Linear layers with ReLU between them: ``(N, in_features) -> (N, out_features)``.

    The default is the network of the MAML paper's sinusoid regression: two hidden layers
    of 40 units.

    Args:
        in_features: Input size.
        hidden: Width of each hidden layer.
        out_features: Output size.
    """

    def __init__(
        self,
        in_features: PositiveInt = 1,
        hidden: Sequence[PositiveInt] = (40, 40),
        out_features: PositiveInt = 1,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        """Map inputs ``(N, in_features)`` to outputs ``(N, out_features)``."""
        out: Tensor = self.layers(x)
        return out
