"""Smoke checks for the peer libraries that benchmarks/peers/setup.sh installs.

Run with the peers interpreter: ``.venv-peers/bin/python benchmarks/peers/verify_peers.py``.
Exits 1 if any check fails. Every check is tiny and runs on the CPU.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from importlib.metadata import version

import torch

EXPECTED_TORCH = "2.13.0+cpu"


def check_torch() -> str:
    assert torch.__version__ == EXPECTED_TORCH, torch.__version__
    return torch.__version__


def check_l2l_data() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l
    from learn2learn.data import MetaDataset, TaskDataset
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels

    n_classes, per_class = 50, 20
    x = torch.randn(n_classes * per_class, 1, 28, 28)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    meta = MetaDataset(torch.utils.data.TensorDataset(x, y))
    assert len(meta.labels) == n_classes, meta.labels
    tasks = TaskDataset(
        meta,
        task_transforms=[
            NWays(meta, n=5),
            KShots(meta, k=1),
            LoadData(meta),
            RemapLabels(meta),
            ConsecutiveLabels(meta),
        ],
        num_tasks=10,
    )
    data, labels = tasks.sample()
    assert tuple(data.shape) == (5, 1, 28, 28), data.shape
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4], labels
    return f"learn2learn {l2l.__version__}: 5-way 1-shot task x{tuple(data.shape)}"


def check_l2l_maml() -> str:
    import learn2learn as l2l

    model = torch.nn.Linear(4, 2)
    learner = l2l.algorithms.MAML(model, lr=0.1).clone()
    xs, ys = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learner.adapt(torch.nn.functional.cross_entropy(learner(xs), ys))
    (grad,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(learner(xs), ys), [model.weight]
    )
    assert float(grad.abs().sum()) > 0
    clone = l2l.clone_module(model)
    l2l.update_module(clone, updates=[torch.zeros_like(p) for p in model.parameters()])
    return f"MAML meta-grad norm {float(grad.norm()):.4f}; clone_module/update_module ok"


def check_higher() -> str:
    import higher

    model = torch.nn.Linear(4, 1)
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs, ys = torch.randn(8, 4), torch.randn(8, 1)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        diffopt.step(((fmodel(xs) - ys) ** 2).mean())
        ((fmodel(xs) - ys) ** 2).mean().backward()
    grad = model.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    return f"higher {version('higher')}: 1-step meta-grad norm {float(grad.norm()):.4f}"


def check_torchopt() -> str:
    import torchopt

    model = torch.nn.Linear(4, 1)
    params0 = list(model.parameters())  # the leaves: meta-parameters
    opt = torchopt.MetaSGD(model, lr=0.1)
    xs, ys = torch.randn(8, 4), torch.randn(8, 1)
    opt.step(((model(xs) - ys) ** 2).mean())  # in-graph, differentiable update
    assert model.weight is not params0[0] and model.weight.grad_fn is not None
    (grad,) = torch.autograd.grad(((model(xs) - ys) ** 2).mean(), params0[:1])
    assert float(grad.abs().sum()) > 0
    return f"torchopt {torchopt.__version__}: MetaSGD meta-grad norm {float(grad.norm()):.4f}"


def check_torchopt_ext() -> str:
    """Informational only: torchopt works without its compiled extension."""
    try:
        from torchopt._C import adam_op  # noqa: F401
    except ImportError as exc:
        abi = "undefined symbol" in str(exc)
        why = "undefined symbol: built for another torch ABI" if abi else str(exc)
        return f"compiled torchopt._C NOT loaded ({why}); torchopt falls back to pure-PyTorch ops"
    return "compiled torchopt._C loaded"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("torch", check_torch),
    ("learn2learn data", check_l2l_data),
    ("learn2learn MAML", check_l2l_maml),
    ("higher", check_higher),
    ("torchopt", check_torchopt),
    ("torchopt ext (info)", check_torchopt_ext),
]


def main() -> int:
    torch.manual_seed(0)
    failed = []
    for name, fn in CHECKS:
        try:
            print(f"[ok]   {name}: {fn()}")
        except Exception as exc:
            failed.append(name)
            print(f"[FAIL] {name}: {type(exc).__name__}: {exc}")
    if failed:
        print(f"{len(failed)} peer check(s) failed: {', '.join(failed)}")
        return 1
    print("all peer checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
