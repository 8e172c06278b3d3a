"""Architecture search methods, one module each; meta-learners register in META_LEARNERS.

metanas.py   MetaNAS: a relaxed cell space whose weights and architecture are
meta-learned together (Reptile, first- or second-order MAML) and adapted
to each task by first-order DARTS
hmetanas.py  H-Meta-NAS: a weight-sharing supernet meta-trained with MAML, one
sub-network per task; searched per device and budget
supernet_pretraining.py  the same supernet pre-trained without meta-learning and
fine-tuned per task (the once-for-all way H-Meta-NAS is compared with)
"""

from metarch.nas.methods.hmetanas import HMetaNAS
from metarch.nas.methods.metanas import AdaptedArchitecture, ArchitectureSchedule, MetaNAS
from metarch.nas.methods.supernet_pretraining import SupernetPretraining

__all__ = [
    "AdaptedArchitecture",
    "ArchitectureSchedule",
    "HMetaNAS",
    "MetaNAS",
    "SupernetPretraining",
]
