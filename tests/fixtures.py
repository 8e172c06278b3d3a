"""Builders of small data sets in the exact on-disk layouts metarch reads."""

from __future__ import annotations

import functools
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


# --------------------------------------------------------------------------- Lake's runs

__all__ += ["LAKE_FIXTURE_RUNS", "LAKE_FIXTURE_WAYS", "lake_answer_key", "write_lake_runs"]

LAKE_FIXTURE_RUNS = 20
LAKE_FIXTURE_WAYS = 20


def lake_answer_key(run: int) -> list[int]:
    """Correct class (0-19) of ``item01`` ... ``item20`` of run ``run`` of write_lake_runs."""
    return [int(c) for c in np.random.default_rng(run).permutation(LAKE_FIXTURE_WAYS)]


@functools.lru_cache(maxsize=2)
def _background_drawings(source: Path) -> dict[str, dict[str, dict[int, str]]]:
    """Alphabet -> character -> drawer -> member name of an official background zip."""
    found: dict[str, dict[str, dict[int, str]]] = {}
    with zipfile.ZipFile(source) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) != 4 or not parts[3].endswith(".png"):
                continue
            _, alphabet, character, file_name = parts
            drawer = int(file_name[:-4].rsplit("_", 1)[1])
            found.setdefault(alphabet, {}).setdefault(character, {})[drawer] = name
    return found


def write_lake_runs(
    dest: Path,
    background_source: Path | None,
    *,
    as_zip: bool = True,
    top_folder: str | None = None,
    same_drawing: bool = False,
) -> Path:
    """Write Lake's ``all_runs`` layout (20 runs of 20-way 1-shot) under ``dest``.

    With ``background_source`` (an official ``images_background.zip``) every run draws 20
    characters of one alphabet (alphabets with at least 20 characters, in turn): one drawer's
    image is the class image and another drawer's image of the same character the query, as
    in Lake's runs. Without it the images are synthetic :func:`omniglot_png` drawings. The
    query of each class sits at the item given by :func:`lake_answer_key`.

    Args:
        dest: Folder to write into.
        background_source: ``images_background.zip``, or ``None`` for synthetic images.
        as_zip: Write ``all_runs.zip`` instead of an ``all_runs/`` folder.
        top_folder: Put the runs below this folder inside the zip (or folder), e.g.
            ``"all_runs"``; ``None`` puts ``run01/`` ... at the top.
        same_drawing: Use the class image itself as the query (identical drawing).

    Returns:
        Path of ``all_runs.zip`` or of the ``all_runs/`` folder.
    """
    ways = LAKE_FIXTURE_WAYS
    files: dict[str, bytes] = {}
    archive = zipfile.ZipFile(background_source) if background_source is not None else None
    try:
        drawings = _background_drawings(background_source) if background_source else {}
        alphabets = sorted(a for a, chars in drawings.items() if len(chars) >= ways)
        for run in range(1, LAKE_FIXTURE_RUNS + 1):
            rng = np.random.default_rng(10_000 + run)
            class_images: list[bytes] = []
            query_images: list[bytes] = []
            if archive is not None:
                characters = drawings[alphabets[(run - 1) % len(alphabets)]]
                chosen = sorted(rng.choice(sorted(characters), size=ways, replace=False))
                class_drawer, query_drawer = (int(d) for d in rng.choice(20, 2, replace=False) + 1)
                for character in chosen:
                    class_images.append(archive.read(characters[character][class_drawer]))
                    query_images.append(archive.read(characters[character][query_drawer]))
            else:
                for c in range(ways):
                    class_images.append(omniglot_png(run * 1000 + c))
                    query_images.append(omniglot_png(run * 1000 + 500 + c))
            if same_drawing:
                query_images = class_images
            prefix = f"run{run:02d}"
            lines = []
            for c, data in enumerate(class_images, start=1):
                files[f"{prefix}/training/class{c:02d}.png"] = data
            for k, c in enumerate(lake_answer_key(run), start=1):
                files[f"{prefix}/test/item{k:02d}.png"] = query_images[c]
                lines.append(
                    f"{prefix}/test/item{k:02d}.png {prefix}/training/class{c + 1:02d}.png"
                )
            files[f"{prefix}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
    finally:
        if archive is not None:
            archive.close()

    top = f"{top_folder}/" if top_folder else ""
    dest.mkdir(parents=True, exist_ok=True)
    if as_zip:
        target = dest / "all_runs.zip"
        with zipfile.ZipFile(target, "w") as out:
            for name, data in files.items():
                out.writestr(top + name, data)
        return target
    target = dest / "all_runs"
    for name, data in files.items():
        path = target / (top + name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def write_small_omniglot(root: Path, drawings: int = 6) -> Path:
    """A data root with a small synthetic Omniglot: background (2 alphabets) and evaluation.

    Background: alphabets Alpha (4 characters) and Beta (3); evaluation: Gamma (4); every
    character ``drawings`` drawings. Returns ``root``.
    """
    write_omniglot_set(root, "images_background", {"Alpha": 4, "Beta": 3}, drawings=drawings)
    write_omniglot_set(root, "images_evaluation", {"Gamma": 4}, drawings=drawings, first_id=100)
    return root
