"""Search-space networks as backbones of :data:`~metarch.models.registry.MODELS`.

So that a config trains them like any backbone: ``metanas-search`` (the relaxation MetaNAS
meta-learns) and ``metanas-genotype`` (the discrete network of one genotype string, for
fixed-architecture baselines and retraining a found cell).
"""

from __future__ import annotations

from torch import nn

from metarch.models.registry import MODELS
from metarch.nas.spaces.metanas import MetaNASNetwork, MetaNASSpace
from metarch.nas.spaces.metanas_search import MetaNASSearchNetwork
from metarch.registry import PositiveInt

__all__ = ["metanas_genotype_network"]


def metanas_genotype_network(
    *,
    genotype: str,
    channels: PositiveInt = 28,
    cells: PositiveInt = 4,
    in_channels: PositiveInt = 1,
) -> nn.Module:
    """The discrete MetaNAS network of ``genotype`` (its canonical string).

    Args:
        genotype: The cells, as ``normal:op~input,op~input|...;reduce:...`` (the canonical
            string ``metarch nas`` commands and evaluation reports print).
        channels: ``C`` per node (MetaNAS: 28 in search, 96 upscaled).
        cells: Number of cells, reductions at cells 1 and 3.
        in_channels: Image channels (set from the data).
    """
    space = MetaNASSpace(channels=channels, cells=cells, in_channels=in_channels)
    return MetaNASNetwork(
        space.decode(genotype), channels=channels, cells=cells, in_channels=in_channels
    )


MODELS.add("metanas-search", MetaNASSearchNetwork)
MODELS.add("metanas-genotype", metanas_genotype_network)
