"""``metarch data ...``: inspect, download, split and draw few-shot data."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metarch.cli.options import (
    DATA_ROOT_OPTION,
    LEGACY_SET_OPTION,
    LEGACY_SETS_OPTION,
    data_root_from,
    pick_dataset,
    pick_datasets,
)
from metarch.cli.progress import show_progress
from metarch.data.download import ARCHIVES, check_download_root, download_omniglot
from metarch.data.episodes import EpisodeSampler
from metarch.data.formats import discover_datasets, load_image_set, unrecognised_archives
from metarch.data.paths import download_root
from metarch.data.pools import NAMED_SPLITS, ClassPool, alphabet_split
from metarch.data.resolve import load_pool
from metarch.errors import DataError
from metarch.reports.episodes import episode_grid_bytes, save_episode_grid
from metarch.utils.io import display_path

__all__ = ["app"]

_DOWNLOAD_HELP = f"What to fetch (repeatable): {', '.join(ARCHIVES)}."
_DOWNLOAD_DEFAULT = ("background", "evaluation", "lake_runs")
# Shared with 'metarch evaluate', whose options mean the same (tests check they agree).
DEFAULT_EPISODE_SET = "background:test"
DEFAULT_WAYS = 5
DEFAULT_SHOTS = 1
DEFAULT_QUERIES = 15
DEFAULT_SEED = 0
# The published split of the background set (NAMED_SPLITS): the defaults of
# `metarch data split`, with its minimum alphabet sizes given.
_PUBLISHED = NAMED_SPLITS["background"]
_PUBLISHED_PARTS = tuple(f"{part}={size}" for part, size in _PUBLISHED.sizes.items())
_GB = 1e9

app = typer.Typer(
    help="Inspect, download, split and draw few-shot data.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("info")
def info(
    data_root: Path | None = DATA_ROOT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List the data sets found in the data root."""
    root = data_root_from(data_root)
    found = discover_datasets(root)
    for s in found:  # on stderr, so that --json output stays one object
        for note in (s.problem, s.warning):
            if note is not None:
                typer.echo(f"warning: {s.name}: {note}", err=True)
    for problem in unrecognised_archives(root, found):
        typer.echo(f"warning: {problem}", err=True)
    if as_json:
        typer.echo(json.dumps({"data_root": str(root), "datasets": [s.to_json() for s in found]}))
        return
    console = Console()
    if not found:
        console.print(f"No data sets found in {root}. Try 'metarch data download'.")
        return
    table = Table(title=f"Data sets in {root}")
    for column in ("name", "format", "alphabets", "classes", "images", "runs", "path"):
        table.add_column(column, justify="right" if column in {"classes", "images"} else "left")
    for s in found:
        table.add_row(
            s.name,
            s.format,
            "" if s.alphabets is None else str(s.alphabets),
            "unreadable" if s.problem else f"{s.classes:,}",
            "" if s.problem else f"{s.images:,}",
            "" if s.runs is None else str(s.runs),
            str(s.path),
        )
    console.print(table)


@app.command("episodes")
def episodes(
    dataset: str = typer.Option(
        DEFAULT_EPISODE_SET,
        "--dataset",
        metavar="NAME",
        help="Set name, SET:PART of a named split, or a split file.",
    ),
    legacy_set: str | None = LEGACY_SET_OPTION,
    out: Path = typer.Option(Path("episodes.png"), "--out", help="PNG file to write."),
    data_root: Path | None = DATA_ROOT_OPTION,
    ways: int = typer.Option(DEFAULT_WAYS, "--ways", help="Classes per episode (N)."),
    shots: int = typer.Option(DEFAULT_SHOTS, "--shots", help="Support images per class (K)."),
    queries: int = typer.Option(DEFAULT_QUERIES, "--queries", help="Query images per class (Q)."),
    count: int = typer.Option(
        3,
        "--episodes",
        help="Episodes to draw (a picture; 'metarch evaluate' scores 1000 by default).",
    ),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the episode stream."),
    within_alphabet: bool = typer.Option(
        False, "--within-alphabet", help="Draw all classes of an episode from one alphabet."
    ),
    rotations: bool = typer.Option(
        False, "--rotations", help="Add 90/180/270-degree rotations as extra classes."
    ),
    image_size: int = typer.Option(28, "--image-size", help="Side of the decoded images."),
    memory_limit: float = typer.Option(
        2.0,
        "--memory-limit",
        help="GB the request may take to sample and draw; larger requests are refused "
        "(the picture grows with ways x episodes).",
    ),
) -> None:
    """Draw sample episodes from a class pool into a PNG."""
    set_name = pick_dataset(dataset, legacy_set, DEFAULT_EPISODE_SET)
    if out.suffix.lower() != ".png":
        raise DataError(f"--out must name a .png file, got {out}")
    if count < 1:
        raise DataError(f"--episodes must be at least 1, got {count}")
    if not memory_limit > 0:
        raise DataError(f"--memory-limit must be a positive number of GB, got {memory_limit}")
    with show_progress():
        pool = load_pool(
            set_name, data_root_from(data_root), image_size=image_size, rotations=rotations
        )
    _check_memory(ways, shots, queries, count, pool.dataset.image_shape, memory_limit)
    sampler = EpisodeSampler(pool, ways, shots, queries, seed=seed, within_group=within_alphabet)
    batch = sampler.sample(tasks=count)
    names = [[pool.entry_label(e) for e in row] for row in batch.entries.tolist()]
    mode = " within-alphabet" if within_alphabet else ""
    title = f"{pool.name}: {ways}-way {shots}-shot{mode}, {queries} queries, seed {seed}"
    save_episode_grid(batch, out, title=title, class_names=names, max_episodes=count)
    typer.echo(f"wrote {count} episodes ({title}) to {display_path(out)}")


@app.command("download")
def download(
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="Folder to download into (default: $METARCH_DATA, else ~/.local/share/metarch; "
        "never a folder found by fallback such as ../shared/data).",
        show_default=False,
    ),
    sets: list[str] = typer.Option(
        list(_DOWNLOAD_DEFAULT), "--dataset", metavar="NAME", help=_DOWNLOAD_HELP
    ),
    legacy_sets: list[str] = LEGACY_SETS_OPTION,
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per connection attempt."),
) -> None:
    """Download the official Omniglot archives (and Lake's runs) into DATA_ROOT/omniglot."""
    sets = pick_datasets(sets, legacy_sets, list(_DOWNLOAD_DEFAULT))
    root = download_root(data_root)
    check_download_root(root, sets)
    with show_progress():
        paths = download_omniglot(root, sets, timeout=timeout)
    for path in paths:
        typer.echo(f"ok {display_path(path)}")


@app.command("split")
def split(
    dataset: str = typer.Option(
        _PUBLISHED.set_name, "--dataset", metavar="NAME", help="Set whose alphabets are split."
    ),
    legacy_set: str | None = LEGACY_SET_OPTION,
    parts: list[str] = typer.Option(
        list(_PUBLISHED_PARTS),
        "--part",
        metavar="PART=N",
        help="PART=ALPHABETS (repeatable); -1 takes the alphabets the others leave.",
    ),
    min_classes: list[str] = typer.Option(
        [],
        "--min-classes",
        metavar="PART=N",
        help="PART=N: alphabets of PART need at least N characters (repeatable).",
    ),
    seed: int = typer.Option(_PUBLISHED.seed, "--seed", help="Shuffle seed."),
    out: Path = typer.Option(Path("splits"), "--out", help="Folder for SET-PART.txt files."),
    data_root: Path | None = DATA_ROOT_OPTION,
) -> None:
    """Write an alphabet-disjoint split of a set as split files (deterministic from the seed).

    The published split of the background set (background:train, :val and :test) is
    these defaults with --min-classes val=20 --min-classes test=20 (20-way within-alphabet
    episodes need alphabets of 20 characters).
    """
    set_name = pick_dataset(dataset, legacy_set, _PUBLISHED.set_name)
    sizes = _key_values(parts, "--part")
    with show_progress():
        images = load_image_set(set_name, data_root_from(data_root), image_size=28)
    split_parts = alphabet_split(
        images, sizes, seed=seed, min_classes=_key_values(min_classes, "--min-classes")
    )
    for part, alphabets in split_parts.items():
        path = out / f"{set_name}-{part}.txt"
        ClassPool.from_groups(images, alphabets).write_split_file(path)
        typer.echo(f"{display_path(path)}: {len(alphabets)} alphabets")
    published = NAMED_SPLITS.get(set_name)
    if published is not None and published.unit == "groups" and published.parts == split_parts:
        names = ", ".join(f"{set_name}:{part}" for part in split_parts)
        typer.echo(f"this is the published split ({names})")


def _check_memory(
    ways: int,
    shots: int,
    queries: int,
    count: int,
    image_shape: tuple[int, int, int],
    limit_gb: float,
) -> None:
    """Refuse an episode picture that would take more than ``limit_gb`` GB to build."""

    def needs(episodes: int) -> float:
        return episode_grid_bytes(ways, shots, queries, episodes, image_shape) / _GB

    if min(ways, shots, count) < 1 or queries < 0 or needs(count) <= limit_gb:
        return  # (invalid shapes are reported by the sampler)
    fitting = [n for n in (100, 50, 20, 10, 5, 2, 1) if n < count and needs(n) <= limit_gb]
    fewer = f"--episodes {fitting[0]} fits" if fitting else "even 1 episode is too large"
    raise DataError(
        f"{ways}-way {shots}-shot {queries}-query x {count} episodes would take about "
        f"{needs(count):.1f} GB to sample and draw, over --memory-limit {limit_gb:g} GB: ask "
        f"for fewer --episodes ({fewer}) or --ways, or raise --memory-limit"
    )


def _key_values(items: list[str], option: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            result[key] = int(value)
        except ValueError:
            raise DataError(f"{option} takes NAME=INTEGER, got {item!r}") from None
    return result
