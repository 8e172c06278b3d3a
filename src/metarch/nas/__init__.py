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
                     weights, temperature from the forward context, skipped weak ops),
                     task-batched through a rule of the engine

To add a search space: subclass :class:`~metarch.nas.spaces.base.SearchSpace` in a module of
its own under ``nas/spaces`` and register it with ``@SEARCH_SPACES.register("name")``.
"""

from metarch.nas.spaces import SEARCH_SPACES, ArchitectureError, SearchSpace, create_space

__all__ = ["SEARCH_SPACES", "ArchitectureError", "SearchSpace", "create_space"]
