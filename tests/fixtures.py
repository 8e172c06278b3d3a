"""Builders of small data sets in the exact on-disk layouts metarch reads."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["omniglot_png", "write_omniglot_set"]


def omniglot_png(seed: int, size: int = 105, mode: str = "1") -> bytes:
    """A random-stroke PNG in Omniglot's format (105x105, 1-bit, black ink on white)."""
    rng = np.random.default_rng(seed)
    canvas = np.ones((size, size), dtype=bool)
    for _ in range(3):
        r, c = rng.integers(10, size - 20, size=2)
        h, w = rng.integers(3, 15, size=2)
        canvas[r : r + h, c : c + w] = False
    image = Image.fromarray(canvas.astype(np.uint8) * 255).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_omniglot_set(
    dest: Path,
    folder: str,
    alphabets: Mapping[str, int],
    *,
    drawings: int = 20,
    first_id: int = 1,
    as_zip: bool = True,
) -> Path:
    """Write a synthetic Omniglot set ``folder`` (e.g. ``images_background``) under ``dest``.

    Args:
        dest: Folder to write into.
        folder: Top folder name of the set.
        alphabets: Alphabet name -> number of characters.
        drawings: Drawings per character.
        first_id: Global id of the first character.
        as_zip: Write ``folder.zip`` (official form) instead of an extracted folder.

    Returns:
        Path of the zip or folder.
    """
    files: dict[str, bytes] = {}
    char_id = first_id
    for alphabet, count in alphabets.items():
        for number in range(1, count + 1):
            for drawer in range(1, drawings + 1):
                name = f"{folder}/{alphabet}/character{number:02d}/{char_id:04d}_{drawer:02d}.png"
                files[name] = omniglot_png(char_id * 100 + drawer)
            char_id += 1
    dest.mkdir(parents=True, exist_ok=True)
    if as_zip:
        target = dest / f"{folder}.zip"
        with zipfile.ZipFile(target, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return target
    for name, data in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest / folder
