"""Search spaces by name (``create_space("nasbench201", channels=8)``)."""

from metarch.nas.spaces.base import (
    SEARCH_SPACES,
    ArchitectureCost,
    ArchitectureError,
    SearchSpace,
    create_space,
)
from metarch.nas.spaces.elastic_conv import ElasticArchitecture, ElasticConvSpace
from metarch.nas.spaces.metanas import Genotype, MetaNASNetwork, MetaNASSpace
from metarch.nas.spaces.nasbench201 import NASBench201Network, NASBench201Space

__all__ = [
    "SEARCH_SPACES",
    "ArchitectureCost",
    "ArchitectureError",
    "ElasticArchitecture",
    "ElasticConvSpace",
    "Genotype",
    "MetaNASNetwork",
    "MetaNASSpace",
    "NASBench201Network",
    "NASBench201Space",
    "SearchSpace",
    "create_space",
]
