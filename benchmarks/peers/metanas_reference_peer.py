"""The reference MetaNAS (boschresearch/metanas) timed on torch 2.13; peers' side of
``benchmarks/metanas_reference.py``.

Runs inside the peers' virtual environment (torch 2.13 CPU, torchvision, scipy; see
``benchmarks/peers/README.md``). The reference is AGPL-3.0 and is **not** part of this
repository: it is imported from the checkout given with ``--reference DIR`` (the folder that
holds the ``metanas`` package), and the patches below are applied at run time, in this
process only, without editing its files.

Usage (normally started by the driver, which writes the meta-batch and the workload)::

    .venv-peers/bin/python benchmarks/peers/metanas_reference_peer.py --reference DIR \
        --data batch.npz --workload '{...}' [--iterations 3] [--warmup 1] [--threads 1] \
        [--without PATCH ...]

It prints one JSON line: the median seconds per meta-iteration (after ``--warmup``
iterations), every iteration's time, the patches applied, and whether the meta-weights
moved; or, when the reference fails, the error and the file and line it was raised at.
``--without PATCH`` leaves a patch out, to show what fails without it.

What runs is the reference's own code path for meta-training: its ``OmniglotFewShot`` task
distribution (``tasks/torchmeta_loader.py``: a ``DataLoader`` per task, drawing
``batch_size`` support examples with replacement), its ``SearchCNNController``
(``metanas_main._build_model``), its ``Darts`` task optimizer and ``NAS_Reptile`` meta
optimizer (``_init_task_optimizer``, ``_init_meta_optimizer``) and its meta-training loop
``metanas_main.train`` itself. ``metanas_main.meta_architecture_search``, which wraps these
calls, is not called: its first line selects a CUDA device (``torch.cuda.set_device``, an
``AttributeError`` on a CPU build of torch) and it ends with the final evaluation. This
script makes the calls it makes in between (seeds, task distribution, normalizer, model,
optimizers) with the workload's settings as arguments (:func:`reference_config`), then
calls ``train``. Timing wraps two of the reference's calls without changing them: a
meta-iteration runs from ``sample_meta_train()`` to the return of ``NAS_Reptile.step``.

Patches (the smallest set with which the reference meta-trains on torch 2.13 CPU, as the
reference behaved on its pinned torch 1.2; line numbers of revision ``950f774``):

``torchmeta`` (data fed through an adapter)
    ``tasks/torchmeta_loader.py`` lines 17-21 import ``torchmeta`` 1.1.1, which does not
    install on torch 2.x (``ModuleNotFoundError: No module named 'torchmeta'``). A stand-in
    ``torchmeta`` package is put in ``sys.modules`` with the six names the loader imports.
    Its ``BatchMetaDataLoader`` yields the driver's meta-batch (``{"train": (x, y), "test":
    (x, y)}``, tasks on the first axis, as torchmeta's does) at every meta-iteration; the
    ``Omniglot``/``ClassSplitter`` stand-ins only record the episode shape. The reference's
    own ``sample_meta_batch`` then builds its task loaders from it. The transforms the
    reference passes (``Resize(28)``, ``ToTensor``) are not applied: the images arrive as
    28x28 float tensors already.
``cpu-drop-path``
    ``models/ops.py`` ``drop_path_`` (line 70) draws its mask with the CUDA-only legacy
    constructor ``torch.cuda.FloatTensor``; on a CPU build the first training forward fails
    (``TypeError: type torch.cuda.FloatTensor not available``). Replaced by the same in-place
    drop-path with the Bernoulli mask made on the input's device.
``accuracy-reshape``
    ``utils/utils.py`` ``accuracy`` (line 233) calls ``.view(-1)`` on rows of a transposed
    (non-contiguous) tensor, which torch 2.x refuses for top-5 (``RuntimeError: view size is
    not compatible with input tensor's size and stride``); it runs after every task's query
    pass. Replaced by the same top-k precision with ``reshape``.
``zero-grad-keeps-tensors``
    Not needed to run, needed to run the same workload: since torch 2.0
    ``Optimizer.zero_grad()`` sets gradients to ``None`` (torch 1.2 zeroed them).
    ``meta_optimizer/reptile.py`` ``NAS_Reptile.step`` zeroes the meta-gradients (lines
    53-54) and then only writes into gradients that are not ``None`` (lines 80-86, 98), so on
    torch 2.x the Reptile meta-update silently does nothing (the meta-weights never move), and
    ``task_optimizer/darts.py`` ``Darts.step`` drops parameters of skipped operations from
    the task's weights (its ``grad is not None`` filters, lines 169 and 177; Adam skips them
    too). The default of ``zero_grad`` is set back to ``set_to_none=False``, torch 1.2's
    behaviour, for every optimizer in this process.

Left as they are: the architecture gradient taken on a copy of the network frozen at
start-up (``Architect.v_net``; the same forward and backward as on the live network, without
drop-path),
the task optimizers' Adam state carried across tasks, batch norm never in eval mode.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import logging
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Shared with the benchmarks (runs in the peers' venv, which has torch and numpy too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import peak_rss_mb, rss_mb

# The reference's ``metanas`` has no __init__.py (a namespace package), so any module named
# ``metanas`` on the path would shadow it: benchmarks/metanas.py is one.
sys.path.pop(0)

PATCHES = ("torchmeta", "cpu-drop-path", "accuracy-reshape", "zero-grad-keeps-tensors")


# -- patches -----------------------------------------------------------------------------


class _EpisodeShape:
    """What the reference asks torchmeta for: ways (``Omniglot``), shots and queries
    (``ClassSplitter``); the stand-ins record it and nothing else."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.seed: int | None = None


def _omniglot(root: Any, **options: Any) -> _EpisodeShape:
    return _EpisodeShape(root=root, **options)


def _class_splitter(dataset: _EpisodeShape, **options: Any) -> _EpisodeShape:
    return _EpisodeShape(**dataset.options, **options)


def _unused(name: str) -> Callable[..., Any]:
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        return None

    stand_in.__name__ = name
    return stand_in


def _mini_imagenet(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("the torchmeta stand-in serves Omniglot-shaped episodes only")


def install_torchmeta(batch: dict[str, torch.Tensor]) -> None:
    """A stand-in ``torchmeta`` whose meta-batch loader yields ``batch`` at every step."""

    class BatchMetaDataLoader:
        def __init__(self, dataset: _EpisodeShape, batch_size: int, **options: Any) -> None:
            self.shape = dataset.options
            self.batch_size = batch_size

        def __iter__(self) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
            ways = self.shape["num_classes_per_task"]
            shots = self.shape["num_train_per_class"]
            queries = self.shape["num_test_per_class"]
            expected = (self.batch_size, ways * shots, ways * queries)
            found = (
                batch["support_x"].shape[0],
                batch["support_x"].shape[1],
                batch["query_x"].shape[1],
            )
            while True:
                if found != expected:  # only the meta-training split is served
                    raise RuntimeError(
                        f"torchmeta stand-in: asked for (tasks, support, query) = {expected}, "
                        f"holds {found}"
                    )
                yield {
                    "train": (batch["support_x"], batch["support_y"]),
                    "test": (batch["query_x"], batch["query_y"]),
                }

    modules = {
        name: types.ModuleType(name)
        for name in (
            "torchmeta",
            "torchmeta.datasets",
            "torchmeta.datasets.helpers",
            "torchmeta.transforms",
            "torchmeta.utils",
            "torchmeta.utils.data",
        )
    }
    modules["torchmeta.datasets"].Omniglot = _omniglot  # type: ignore[attr-defined]
    modules["torchmeta.datasets.helpers"].miniimagenet = _mini_imagenet  # type: ignore[attr-defined]
    modules["torchmeta.transforms"].Categorical = _unused("Categorical")  # type: ignore[attr-defined]
    modules["torchmeta.transforms"].Rotation = _unused("Rotation")  # type: ignore[attr-defined]
    modules["torchmeta.transforms"].ClassSplitter = _class_splitter  # type: ignore[attr-defined]
    modules["torchmeta.utils.data"].BatchMetaDataLoader = BatchMetaDataLoader  # type: ignore[attr-defined]
    sys.modules.update(modules)


def cpu_drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Drop-path as the reference's (in place, one Bernoulli draw per sample), on any device."""
    if training and drop_prob > 0.0:
        keep = 1.0 - drop_prob
        mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
        x.div_(keep).mul_(mask)
    return x


def reshape_accuracy(
    output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)
) -> list[torch.Tensor]:
    """Top-k precision for each k in ``topk`` (class-index targets)."""
    _, predicted = output.topk(max(topk), 1, True, True)
    hits = predicted.t().eq(target.reshape(1, -1))
    return [hits[:k].reshape(-1).float().sum(0) / target.shape[0] for k in topk]


def replace(module: str, name: str, value: Callable[..., Any]) -> None:
    """Rebind a function of one of the reference's modules (its callers look it up there)."""
    setattr(importlib.import_module(module), name, value)


def keep_zeroed_gradients() -> None:
    """``Optimizer.zero_grad()`` zeroes gradients instead of freeing them (torch < 2.0)."""
    original = torch.optim.Optimizer.zero_grad

    def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = False) -> None:
        original(self, set_to_none=set_to_none)

    torch.optim.Optimizer.zero_grad = zero_grad  # type: ignore[method-assign]


# -- the reference's configuration -------------------------------------------------------


def reference_config(workload: dict[str, Any], meta_epochs: int, folder: str) -> Any:
    """The reference's argparse namespace for the workload (its Omniglot settings
    otherwise; ``--use_hp_setting`` off so that nothing is overridden)."""
    logger = logging.getLogger("metanas-reference-peer")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return argparse.Namespace(
        # data (torchmeta stand-in)
        dataset="omniglot",
        data_path=None,
        use_vinyals_split=False,
        use_torchmeta_loader=True,
        workers=0,
        k=workload["ways"],
        n_train=workload["shots"],
        q=workload["queries"],
        n=1,
        meta_batch_size=workload["meta_batch"],
        test_meta_batch_size=25,
        batch_size=workload["inner_batch"],
        batch_size_test=10,
        seed=2,
        # model
        meta_model="searchcnn",
        init_channels=workload["channels"],
        layers=workload["cells"],
        nodes=workload["nodes"],
        reduction_layers=list(workload["reductions"]),
        use_hierarchical_alphas=False,
        use_pairwise_input_alphas=True,
        alpha_prune_threshold=workload["skip_below"],
        meta_model_prune_threshold=workload["prune_below"],
        normalizer="softmax",
        normalizer_temp_anneal_mode="linear",
        normalizer_t_max=workload["temperature"][0],
        normalizer_t_min=workload["temperature"][1],
        drop_path_prob=workload["drop_path"],
        use_drop_path_in_meta_testing=False,
        gpus=[0],
        device=torch.device("cpu"),
        # task optimizer (first-order DARTS)
        task_train_steps=workload["steps"],
        test_task_train_steps=50,
        test_adapt_steps=1.0,
        warm_up_epochs=0,  # architecture steps from the first meta-iteration
        w_lr=workload["weights_lr"],
        alpha_lr=workload["architecture_lr"],
        w_weight_decay=0.0,
        alpha_weight_decay=workload["architecture_weight_decay"],
        w_momentum=0.0,
        w_grad_clip=10e5,
        w_task_anneal=0,
        a_task_anneal=0,
        use_first_order_darts=True,
        do_unrolled_architecture_steps=False,
        sparsify_input_alphas=None,
        # meta optimizer (Reptile)
        w_meta_optim=None,
        a_meta_optim=None,
        w_meta_lr=workload["meta_lr"],
        a_meta_lr=workload["architecture_meta_lr"],
        w_meta_anneal=0,
        a_meta_anneal=0,
        # loop
        start_epoch=1,
        meta_epochs=meta_epochs,
        eval_freq=meta_epochs + 1,  # no intermediate evaluation inside the timed run
        eval_epochs=1,
        print_freq=meta_epochs + 1,
        eval=False,
        model_path=None,
        path=folder + "/",
        job_id=None,
        logger=logger,
    )


# -- run -----------------------------------------------------------------------------------


def failure(exc: BaseException, reference: Path) -> dict[str, Any]:
    """The error and the innermost frame of the reference it came from (file and line;
    the reference's source is not quoted)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if Path(f.filename).resolve().is_relative_to(reference)]
    frame = (inside or frames)[-1] if frames else None
    where = None
    if frame is not None:
        path = Path(frame.filename).resolve()
        name = path.relative_to(reference) if path.is_relative_to(reference) else path.name
        where = f"{name}:{frame.lineno} in {frame.name}"
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "where": where}


def run(args: argparse.Namespace) -> dict[str, Any]:
    reference = Path(args.reference).resolve()
    if not (reference / "metanas" / "metanas_main.py").is_file():
        raise SystemExit(f"--reference {reference}: no metanas/metanas_main.py there")
    sys.path.insert(0, str(reference))
    arrays = np.load(args.data)
    batch = {
        "support_x": torch.from_numpy(arrays["support_x"]).float(),
        "support_y": torch.from_numpy(arrays["support_y"]).long(),
        "query_x": torch.from_numpy(arrays["query_x"]).float(),
        "query_y": torch.from_numpy(arrays["query_y"]).long(),
    }
    workload = json.loads(args.workload)
    applied = [p for p in PATCHES if p not in args.without]
    result: dict[str, Any] = {"impl": "reference", "patches": applied}
    starts: list[float] = []
    ends: list[float] = []
    try:
        if "torchmeta" in applied:
            install_torchmeta(batch)
        if "zero-grad-keeps-tensors" in applied:
            keep_zeroed_gradients()
        # Imported by name: the reference is no package of this environment (nor typed).
        metanas_main = importlib.import_module("metanas.metanas_main")
        nas_reptile = importlib.import_module("metanas.meta_optimizer.reptile").NAS_Reptile
        darts = importlib.import_module("metanas.task_optimizer.darts").Darts
        if "cpu-drop-path" in applied:
            replace("metanas.models.ops", "drop_path_", cpu_drop_path)
        if "accuracy-reshape" in applied:
            replace("metanas.utils.utils", "accuracy", reshape_accuracy)
        loader = importlib.import_module("metanas.tasks.torchmeta_loader")

        np.random.seed(2)
        torch.manual_seed(2)
        with tempfile.TemporaryDirectory() as folder:
            config = reference_config(workload, args.warmup + args.iterations, folder)
            tasks = loader.OmniglotFewShot(config, download=False)
            normalizer = metanas_main._init_alpha_normalizer(
                config.normalizer,
                config.task_train_steps,
                config.normalizer_t_max,
                config.normalizer_t_min,
                config.normalizer_temp_anneal_mode,
            )
            model = metanas_main._build_model(config, tasks, normalizer)
            config, meta_optimizer = metanas_main._init_meta_optimizer(config, nas_reptile, model)
            config, task_optimizer = metanas_main._init_task_optimizer(config, darts, model)
            initial = copy.deepcopy(dict(model.named_weights()))
            result["parameters"] = sum(p.numel() for p in model.parameters())

            sample, step = tasks.sample_meta_train, meta_optimizer.step

            def timed_sample() -> Any:
                starts.append(time.perf_counter())
                return sample()

            def timed_step(task_infos: Any) -> None:
                step(task_infos)
                ends.append(time.perf_counter())

            tasks.sample_meta_train = timed_sample
            meta_optimizer.step = timed_step
            result["setup_rss_mb"] = rss_mb()
            metanas_main.train(config, model, tasks, task_optimizer, meta_optimizer)
            with torch.no_grad():
                moved = max(
                    float((value - initial[name]).abs().max())
                    for name, value in model.named_weights()
                )
            result["meta_weights_max_change"] = moved
    except Exception as exc:
        result.update(failure(exc, reference))
    times = [end - start for start, end in zip(starts, ends, strict=False)]
    result["iterations_done"] = len(times)
    result["iteration_seconds"] = times
    timed = times[args.warmup :]
    result["seconds_per_iteration"] = float(np.median(timed)) if timed else None
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch"] = torch.__version__
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout holding metanas/")
    parser.add_argument("--data", required=True, help="the driver's meta-batch (.npz)")
    parser.add_argument("--workload", required=True, help="the driver's workload (JSON)")
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-iterations first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--without", nargs="*", default=[], choices=PATCHES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):  # the reference prints; stdout is the JSON
        result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
