"""Turn a ``--dataset`` value into a class pool.

Accepted forms, tried in this order:

* a path to a split file (``Alphabet/characterNN[/rotDDD]`` per line), resolved against the
  Omniglot background and evaluation sets found below the data root;
* ``SET:PART``, a part of a named split (``background:train``, ``background:test``,
  parts joined by ``+`` as in ``background:train+val``) or of a set that ships its own
  splits (``mini-imagenet:val``);
* the name of any set ``metarch data info`` lists (``background``, a folder name, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from metarch.data.base import ImageClassDataset
from metarch.data.formats import load_image_set
from metarch.data.omniglot import find_omniglot_source, load_omniglot_source
from metarch.data.pools import NAMED_SPLITS, ClassPool
from metarch.errors import DataError

__all__ = ["load_pool"]


def _omniglot_for_split_files(
    root: Path, image_size: int, cache_dir: str | os.PathLike[str] | None
) -> ImageClassDataset:
    parts = []
    for set_name in ("background", "evaluation"):
        source = find_omniglot_source(set_name, root)
        if source is not None:
            parts.append(
                load_omniglot_source(set_name, source, image_size=image_size, cache_dir=cache_dir)
            )
    if not parts:
        raise DataError(
            f"a split file needs the Omniglot background or evaluation set, but neither is in "
            f"{root} or {root / 'omniglot'}; pass --data-root DIR"
        )
    return parts[0] if len(parts) == 1 else ImageClassDataset.concat("omniglot", parts)


def load_pool(
    spec: str,
    data_root: Path,
    *,
    image_size: int = 28,
    rotations: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClassPool:
    """Load the class pool a ``--dataset`` value names (see the module docstring).

    Args:
        spec: Split file path, ``SET:PART`` or set name.
        data_root: Folder the sets are found in.
        image_size: Side of the decoded images.
        rotations: Add 90/180/270-degree rotations of every class as extra classes.
        cache_dir: Decode cache folder.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        dataset = _omniglot_for_split_files(data_root, image_size, cache_dir)
        pool = ClassPool.from_split_file(dataset, path)
    elif spec.endswith(".txt"):
        raise DataError(f"split file {spec} does not exist")
    elif ":" in spec and spec.split(":", 1)[0] in NAMED_SPLITS:
        set_name, part = spec.split(":", 1)
        dataset = load_image_set(set_name, data_root, image_size=image_size, cache_dir=cache_dir)
        pool = NAMED_SPLITS[set_name].pool(dataset, part)
    else:  # a set name, or NAME:PART of a format with its own parts
        dataset = load_image_set(spec, data_root, image_size=image_size, cache_dir=cache_dir)
        pool = ClassPool.whole(dataset, spec)
    return pool.with_rotations() if rotations else pool
