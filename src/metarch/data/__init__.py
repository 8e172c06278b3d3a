"""Episodic few-shot data: readers for real data sets, class pools, episode samplers.

Layout:
    base.py      the decoded in-memory form of every image set
    formats.py   the format interface and its registry (``DATA_FORMATS``)
    omniglot.py, lake.py, folder.py, miniimagenet.py   one module per on-disk format
    pools.py     class pools: splits, split files, rotations
    episodes.py  N-way K-shot episode sampling
    sinusoid.py  sinusoid regression tasks
"""

# Importing the format modules registers them in DATA_FORMATS.
from metarch.data import folder, lake, miniimagenet  # noqa: F401
from metarch.data.base import ImageClassDataset
from metarch.data.formats import DATA_FORMATS, DataFormat, DatasetSummary, discover_datasets
from metarch.data.omniglot import OMNIGLOT_SETS, OmniglotSet, load_omniglot

__all__ = [
    "DATA_FORMATS",
    "OMNIGLOT_SETS",
    "DataFormat",
    "DatasetSummary",
    "ImageClassDataset",
    "OmniglotSet",
    "discover_datasets",
    "load_omniglot",
]
