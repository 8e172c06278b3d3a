"""Meta-learners behind one interface (:class:`MetaLearner`), found by name.

Layout:
    base.py        the interface and the ``META_LEARNERS`` registry
    functional.py  the inner loop every gradient-based learner adapts through
    optim.py       inner-loop optimizers: differentiable init/update rules (INNER_OPTIMIZERS)
    batched.py     the task-batched engine (many tasks' inner loops in one grouped pass;
                   register_batched_module teaches it a module)
    losses.py      task losses (TASK_LOSSES): classification, regression
    maml.py        MAML, first-order MAML, Meta-SGD, ANIL (and MAML++ options)
    reptile.py     Reptile (first order, on the same inner loop and engine)
    protonet.py    prototypical networks
    test_time.py   test-time augmentation for any of them
"""

from metarch.meta.base import (
    META_LEARNERS,
    MetaLearner,
    MetaMetrics,
    Predictor,
    create_meta_learner,
)
from metarch.meta.functional import InnerLoopConfig, adapt_task, run_task
from metarch.meta.maml import ANIL, FOMAML, MAML, MetaSGD
from metarch.meta.optim import INNER_OPTIMIZERS, InnerOptimizer
from metarch.meta.protonet import PrototypicalNetwork, compute_prototypes
from metarch.meta.reptile import Reptile
from metarch.meta.test_time import TestTimeAugmentation

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "META_LEARNERS",
    "INNER_OPTIMIZERS",
    "InnerLoopConfig",
    "InnerOptimizer",
    "MetaLearner",
    "MetaMetrics",
    "MetaSGD",
    "Predictor",
    "PrototypicalNetwork",
    "Reptile",
    "TestTimeAugmentation",
    "adapt_task",
    "compute_prototypes",
    "create_meta_learner",
    "run_task",
]
