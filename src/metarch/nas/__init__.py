"""Neural architecture search: search spaces, and (next) the searches that use them.

Layout:
    ops.py           candidate operations by name (OPERATIONS): the few-shot DARTS ops
    spaces/          search spaces behind one interface (SearchSpace), found by name in
                     SEARCH_SPACES; one module per space
        base.py      the interface: sample, encode/decode (canonical string and JSON),
                     enumerate, build the discrete network, its cost
        nasbench201.py  the NAS-Bench-201 cell space (its networks have real-device
                     latencies in ../shared/data/hardware)
        metanas.py   MetaNAS's few-shot DARTS cell space (genotypes and their networks)
        metanas_search.py  its continuous relaxation (mixed operations, pairwise input
                     weights, temperature from the forward context, skipped weak ops,
                     pruning, drop-path), task-batched through a rule of the engine
    methods/         architecture search methods, one module each
        metanas.py   MetaNAS: architecture and weights meta-learned together (a
                     meta-learner, registered in META_LEARNERS as "metanas")
    backbones.py     the spaces' networks as backbones (MODELS: metanas-search,
                     metanas-genotype)

To add a search space: subclass :class:`~metarch.nas.spaces.base.SearchSpace` in a module of
its own under ``nas/spaces`` and register it with ``@SEARCH_SPACES.register("name")``. To let
gradient-based methods search it, give it a relaxation
(:class:`~metarch.nas.spaces.base.Relaxation`).
"""

from metarch.nas import backbones
from metarch.nas.methods import MetaNAS
from metarch.nas.spaces import SEARCH_SPACES, ArchitectureError, SearchSpace, create_space

__all__ = [
    "SEARCH_SPACES",
    "ArchitectureError",
    "MetaNAS",
    "SearchSpace",
    "backbones",
    "create_space",
]
