"""``metarch demo``: the main job on built-in defaults."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from metarch.cli.options import DATA_ROOT_OPTION, data_root_from
from metarch.cli.progress import show_progress
from metarch.data.episodes import EpisodeSampler
from metarch.data.formats import discover_datasets
from metarch.data.omniglot import load_omniglot
from metarch.data.pools import NAMED_SPLITS
from metarch.engine.checkpoint import load_checkpoint
from metarch.engine.config import TrainConfig, load_config
from metarch.engine.evaluate import evaluate_episodes, load_trained_learner
from metarch.engine.search import (
    Budget,
    device_latency,
    search_trained,
    supernet_learner,
    validation_tasks,
)
from metarch.engine.trainer import Trainer
from metarch.models.cost import count_parameters
from metarch.reports.episodes import save_episode_grid
from metarch.utils.io import atomic_write_text, display_path

__all__ = ["demo"]


def demo(
    data_root: Path | None = DATA_ROOT_OPTION,
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch Omniglot if it is missing."
    ),
    steps: int = typer.Option(
        800, "--steps", help="Meta-training steps of the demo's prototypical network (0: skip it)."
    ),
    episodes: int = typer.Option(400, "--episodes", help="Evaluation episodes per task."),
    nas_steps: int = typer.Option(
        60,
        "--nas-steps",
        help="Meta-training steps of the demo's MetaNAS (architecture search; 0: skip it).",
    ),
    supernet_steps: int = typer.Option(
        300,
        "--supernet-steps",
        help="Meta-training steps of the demo's H-Meta-NAS supernet (0: skip it).",
    ),
) -> None:
    """Load Omniglot, draw episodes, meta-train a prototypical network, a MetaNAS and an H-Meta-NAS.

    The H-Meta-NAS supernet is searched for three latency budgets on this CPU.
    """
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
        names = [[test_pool.entry_label(e) for e in row] for row in batch.entries.tolist()]
        mode = " within-alphabet" if within else ""
        save_episode_grid(
            batch,
            out / file_name,
            title=f"background:test {ways}-way 1-shot{mode}",
            class_names=names,
        )
        console.print(f"wrote {display_path(out / file_name)}")

    if steps > 0:
        _train_and_evaluate(console, root, out / "run", steps, episodes)
    if nas_steps > 0:
        _search_architectures(console, root, out / "metanas", nas_steps, min(episodes, 20))
    if supernet_steps > 0:
        _search_budgets(console, root, out / "hmetanas", supernet_steps, min(episodes, 100))


def _train(
    console: Console, root: Path, run: Path, config: TrainConfig, what: str
) -> tuple[Trainer, float]:
    """Meta-train ``config`` into ``run`` (resuming a demo run found there); seconds taken."""
    steps = config.steps
    resume = (run / "last.json").exists()
    if resume and load_checkpoint(run / "last.json").config != config.model_dump(mode="json"):
        console.print(f"{display_path(run)} holds another run; remove it or pass another --out")
        raise typer.Exit(2)
    console.print(
        f"meta-training {what} on background:train, {steps} steps"
        + (" (resuming)" if resume else "")
    )
    trainer = Trainer(config, run, resume=resume, data_root=root)
    with Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=steps, completed=trainer.start_step, status="")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            status = f"loss {metrics['loss']:.3f} acc {metrics['accuracy']:.1f}%"
            progress.update(task, completed=step, status=status)

        trainer.on_step = on_step
        started = time.perf_counter()
        try:
            trainer.run()
        except KeyboardInterrupt:
            step = load_checkpoint(run / "last.json").step if (run / "last.json").exists() else 0
            console.print(
                f"interrupted; run the same 'metarch demo' again to continue from step {step}"
            )
            raise typer.Exit(130) from None
    return trainer, time.perf_counter() - started


def _train_and_evaluate(console: Console, root: Path, run: Path, steps: int, episodes: int) -> None:
    """Meta-train the demo model (or reuse a finished demo run) and print a results table."""
    config = load_config(None, [f"steps={steps}"] + [f"{k}={v}" for k, v in DEMO_CONFIG.items()])
    trainer, seconds = _train(console, root, run, config, "a prototypical network (Conv-4)")
    learner = trainer.learner
    table = Table(title=f"Held-out alphabets (background:test), {episodes} episodes each")
    for column in ("task", "accuracy", "95% CI"):
        table.add_column(column)
    for ways, within in ((5, False), (20, False), (20, True)):
        result = evaluate_episodes(
            learner,
            "background:test",
            root,
            image_size=config.data.image_size,
            ways=ways,
            shots=1,
            queries=5,
            episodes=episodes,
            within_alphabet=within,
            inputs=trainer.inputs,
        )
        name = f"{ways}-way 1-shot" + (" within-alphabet" if within else "")
        table.add_row(name, f"{result.accuracy:.2f}%", f"± {result.ci95:.2f}%")
    console.print(table)
    console.print(f"training took {seconds:.0f} s; the run is in {display_path(run)}")


def _search_architectures(
    console: Console, root: Path, run: Path, steps: int, episodes: int
) -> None:
    """Meta-learn a small MetaNAS cell; show the architectures held-out tasks adapt to."""
    config = load_config(
        None, [f"steps={steps}"] + [f"{k}={v}" for k, v in DEMO_NAS_CONFIG.items()]
    )
    what = "MetaNAS (a cell's architecture and weights)"
    trainer, seconds = _train(console, root, run, config, what)
    result = evaluate_episodes(
        trainer.learner,
        "background:test",
        root,
        image_size=config.data.image_size,
        ways=5,
        shots=1,
        queries=5,
        episodes=episodes,
        inputs=trainer.inputs,
    )
    found = result.architectures
    assert found is not None  # MetaNAS adapts architectures
    table = Table(
        title=f"Architectures adapted to {episodes} held-out 5-way 1-shot tasks "
        f"(accuracy {result.accuracy:.2f}% ± {result.ci95:.2f}%; {found.distinct} distinct)"
    )
    for column in ("tasks", "accuracy", "parameters", "MFLOPs", "cell (normal;reduce)"):
        table.add_column(column, overflow="fold")
    for share in found.most_frequent:
        table.add_row(
            str(share.tasks),
            f"{share.accuracy:.1f}%",
            f"{share.parameters:,}",
            f"{share.flops / 1e6:.2f}",
            share.architecture,
        )
    console.print(table)
    console.print(f"meta-architecture (before adaptation): {found.meta_architecture}")
    console.print(
        f"training took {seconds:.0f} s; adapt it to your own task with "
        f"'metarch nas adapt --run {display_path(run)} --support DIR'"
    )


def _search_budgets(console: Console, root: Path, run: Path, steps: int, episodes: int) -> None:
    """Meta-train a small H-Meta-NAS supernet; search it for three budgets on this CPU.

    The CPU's layer latency table is profiled once, then cached; each choice is tested.
    """
    config = load_config(
        None, [f"steps={steps}"] + [f"{k}={v}" for k, v in DEMO_SUPERNET_CONFIG.items()]
    )
    what = "an H-Meta-NAS supernet (elastic Conv-4: depth, kernels, widths)"
    _, seconds = _train(console, root, run, config, what)
    trained = load_trained_learner(run, "last")
    learner = supernet_learner(trained)
    space = learner.space
    console.print("latency table of torch-cpu (profiled once, then cached) ...")
    latency = device_latency(space, "torch-cpu")
    tasks = validation_tasks(trained, root, tasks=5, seed=0)
    smallest = latency.model.predict(space.smallest())
    largest = latency.model.predict(space.largest())
    table = Table(
        title=f"Sub-networks for torch-cpu budgets, each tested on {episodes} held-out 5-way "
        "1-shot tasks (background:test)"
    )
    for column in ("budget", "sub-network", "predicted", "measured", "parameters", "accuracy"):
        table.add_column(column, overflow="fold")
    rows = []
    for share in (0.2, 0.5, 1.0):
        budget = smallest + share * (largest - smallest)
        found = search_trained(trained, tasks, Budget(latency_ms=budget), latency, evaluations=12)
        architecture = found.best.architecture
        network = space.build(architecture, num_classes=config.episodes.ways)
        predicted = latency.model.predict(architecture)
        measured = latency.measure(network, space.input_shape)
        learner.use_architecture(architecture)
        result = evaluate_episodes(
            learner,
            "background:test",
            root,
            image_size=config.data.image_size,
            ways=config.episodes.ways,
            shots=1,
            queries=5,
            episodes=episodes,
            inputs=trained.inputs,
        )
        parameters = count_parameters(network)
        rows.append(
            {
                "budget_ms": budget,
                "architecture": found.best.text,
                "predicted_ms": predicted,
                "measured_ms": measured,
                "parameters": parameters,
                "accuracy": result.accuracy,
                "ci95": result.ci95,
            }
        )
        table.add_row(
            f"{budget:.3f} ms",
            found.best.text,
            f"{predicted:.3f} ms",
            f"{measured or float('nan'):.3f} ms",
            f"{parameters:,}",
            f"{result.accuracy:.1f}% ± {result.ci95:.1f}%",
        )
    console.print(table)
    atomic_write_text(run / "budgets.json", json.dumps({"device": "torch-cpu", "rows": rows}))
    console.print(f"wrote {display_path(run / 'budgets.json')}")
    console.print(
        f"training took {seconds:.0f} s; search and adapt it for your own device, budget and "
        f"task with 'metarch search --run {display_path(run)} --device torch-cpu --latency-ms "
        "X --out DIR' and 'metarch adapt ... --support DIR'"
    )


# The demo's H-Meta-NAS: a strided elastic Conv-4 of 8 to 16 channels, first-order MAML on a
# sandwich of sub-networks: a minute or two on two cores.
DEMO_SUPERNET_CONFIG = {
    "method.name": "hmetanas",
    "method.options": "{meta_learner: fomaml, inner_lr: 0.1, steps: 3, eval_steps: 5, sandwich: 4}",
    "model.name": "elastic-conv-supernet",
    "model.options": "{channels: 8, max_depth: 2, downsample: stride}",
    "meta_batch": 8,
    "episodes.ways": 5,
    "episodes.shots": 1,
    "episodes.queries": 5,
    "data.train_set": "background:train",
    "data.val_set": "background:val",
    "data.rotations": "true",
    "optimizer.name": "adam",
    "optimizer.lr": 0.001,
    "validation.every": 100000,
    "checkpoint_every": 50,
}

# The demo's MetaNAS: 4 channels, a normal and a reduction cell, Reptile, a third of the run
# as warm-up: a few minutes on two cores.
DEMO_NAS_CONFIG = {
    "method.name": "metanas",
    "method.options": (
        "{steps: 3, eval_steps: 10, eval_architecture_steps: 5, inner_batch_size: 10,"
        " eval_batch_size: 5, warmup_iterations: 20, prune_every: 20}"
    ),
    "model.name": "metanas-search",
    "model.options": "{channels: 4, cells: 2, drop_path: 0.2}",
    "meta_batch": 2,
    "episodes.ways": 5,
    "episodes.shots": 5,
    "episodes.queries": 1,
    "data.train_set": "background:train",
    "data.val_set": "null",
    "data.rotations": "true",
    "optimizer.name": "sgd",
    "optimizer.lr": 1.0,
    "optimizer.groups": "{architecture: {lr: 0.6}}",
    "checkpoint_every": 20,
}

# The demo's model: small enough to train in a few minutes on two CPU cores.
DEMO_CONFIG = {
    "method.name": "protonet",
    "model.name": "conv4",
    "model.channels_last": "true",
    "episodes.ways": 20,
    "episodes.shots": 1,
    "episodes.queries": 5,
    "data.train_set": "background:train",
    "data.val_set": "background:val",
    "data.rotations": "true",
    "validation.every": 500,
    "validation.episodes": 100,
    "validation.episode": "{ways: 5, shots: 1, queries: 5}",
    "checkpoint_every": 250,
}
