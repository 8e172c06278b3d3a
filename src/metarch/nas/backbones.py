"""Search-space networks as backbones of :data:`~metarch.models.registry.MODELS`.

So that a config trains them like any backbone: ``metanas-search`` and
``nasbench201-search`` (the relaxations MetaNAS meta-learns), ``metanas-genotype`` and
``nasbench201-genotype`` (the discrete network of one genotype string, for
fixed-architecture baselines and retraining a found cell), ``elastic-conv-supernet`` (the
weight-sharing supernet H-Meta-NAS meta-learns) and ``elastic-conv`` (one of its
networks, for manual baselines in the same space), ``nasbench201-supernet`` (the
NAS-Bench-201 cells as a one-shot supernet for H-Meta-NAS).
"""

from __future__ import annotations

from torch import nn

from metarch.models.registry import MODELS
from metarch.nas.spaces.elastic_conv import Downsample, ElasticConvSpace
from metarch.nas.spaces.elastic_conv_supernet import ElasticConvSupernet
from metarch.nas.spaces.metanas import MetaNASNetwork, MetaNASSpace
from metarch.nas.spaces.metanas_search import MetaNASSearchNetwork
from metarch.nas.spaces.nasbench201 import NASBench201Network, NASBench201Space
from metarch.nas.spaces.nasbench201_search import NASBench201SearchNetwork
from metarch.nas.spaces.nasbench201_supernet import NASBench201Supernet
from metarch.registry import PositiveInt

__all__ = ["elastic_conv_network", "metanas_genotype_network", "nasbench201_genotype_network"]


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


def nasbench201_genotype_network(
    *,
    genotype: str,
    channels: PositiveInt = 16,
    cells_per_stage: PositiveInt = 5,
    in_channels: PositiveInt = 3,
) -> nn.Module:
    """The NAS-Bench-201 macro network of ``genotype`` (its canonical string).

    Args:
        genotype: The cell, as ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (the benchmark's
            string, printed by evaluation reports and ``metarch nas adapt``).
        channels: ``C``, the first stage's width (the benchmark: 16).
        cells_per_stage: ``N`` (the benchmark: 5).
        in_channels: Image channels (set from the data).
    """
    space = NASBench201Space(channels=channels, cells_per_stage=cells_per_stage)
    return NASBench201Network(
        space.decode(genotype),
        channels=channels,
        cells_per_stage=cells_per_stage,
        in_channels=in_channels,
    )


def elastic_conv_network(
    *,
    architecture: str,
    channels: PositiveInt = 32,
    max_depth: PositiveInt = 3,
    in_channels: PositiveInt = 3,
    image_size: PositiveInt = 32,
    downsample: Downsample = "maxpool",
) -> nn.Module:
    """The network of one elastic-conv architecture (its canonical string).

    Args:
        architecture: ``e<expansion>|k<kernel>w<ratio>,...|...`` (4 stages).
        channels: The space's base width.
        max_depth: Most layers per stage.
        in_channels: Image channels (set from the data).
        image_size: Image side (set from the data).
        downsample: ``maxpool`` or ``stride`` (halving each stage).
    """
    space = ElasticConvSpace(
        channels=channels,
        max_depth=max_depth,
        in_channels=in_channels,
        image_size=image_size,
        downsample=downsample,
    )
    return space.build(space.decode(architecture))


MODELS.add("metanas-search", MetaNASSearchNetwork)
MODELS.add("elastic-conv-supernet", ElasticConvSupernet)
MODELS.add("elastic-conv", elastic_conv_network)
MODELS.add("metanas-genotype", metanas_genotype_network)
MODELS.add("nasbench201-search", NASBench201SearchNetwork)
MODELS.add("nasbench201-genotype", nasbench201_genotype_network)
MODELS.add("nasbench201-supernet", NASBench201Supernet)
