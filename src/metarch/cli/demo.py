"""``metarch demo``: the main job on built-in defaults."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metarch.cli.options import DATA_ROOT_OPTION, data_root_from
from metarch.cli.progress import show_progress
from metarch.data.episodes import EpisodeSampler
from metarch.data.formats import discover_datasets
from metarch.data.omniglot import load_omniglot
from metarch.data.pools import NAMED_SPLITS
from metarch.reports.episodes import save_episode_grid

__all__ = ["demo"]


def demo(
    data_root: Path | None = DATA_ROOT_OPTION,
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch Omniglot if it is missing."
    ),
) -> None:
    """Load Omniglot, print facts about it, and draw sample episodes of held-out alphabets."""
    console = Console()
    root = data_root_from(data_root)
    started = time.perf_counter()
    with show_progress():
        background = load_omniglot("background", root, download=download)
    load_seconds = time.perf_counter() - started

    table = Table(title=f"Data sets in {root}")
    for column in ("name", "format", "alphabets", "classes", "images"):
        table.add_column(column)
    for s in discover_datasets(root):
        alphabets = "" if s.alphabets is None else str(s.alphabets)
        table.add_row(s.name, s.format, alphabets, f"{s.classes:,}", f"{s.images:,}")
    console.print(table)

    split = NAMED_SPLITS["background"]
    facts = Table(title="Omniglot background, as decoded")
    facts.add_column("fact")
    facts.add_column("value")
    facts.add_row(
        "alphabets / characters / images",
        f"{len(background.alphabets)} / {background.num_classes} / {background.num_images}",
    )
    facts.add_row(
        "image array",
        f"{tuple(background.images.shape)} uint8, {background.images.nbytes / 2**20:.1f} MiB",
    )
    facts.add_row("load time (cache hit after the first run)", f"{load_seconds:.2f} s")
    for part, part_alphabets in split.parts.items():
        characters = sum(len(background.classes_in_group(a)) for a in part_alphabets)
        facts.add_row(
            f"split background:{part}",
            f"{len(part_alphabets)} alphabets, {characters} characters",
        )
    console.print(facts)

    out.mkdir(parents=True, exist_ok=True)
    test_pool = split.pool(background, "test")
    for within, file_name in (
        (False, "episodes-5way.png"),
        (True, "episodes-20way-within-alphabet.png"),
    ):
        ways = 20 if within else 5
        sampler = EpisodeSampler(test_pool, ways, 1, 5, seed=0, within_group=within)
        batch = sampler.sample(tasks=2 if within else 3)
        names = [[test_pool.entry_names[e] for e in row] for row in batch.entries.tolist()]
        mode = " within-alphabet" if within else ""
        save_episode_grid(
            batch,
            out / file_name,
            title=f"background:test {ways}-way 1-shot{mode}",
            class_names=names,
        )
        console.print(f"wrote {out / file_name}")
