"""Peers' side of benchmarks/meta_step.py; runs inside the peers' virtual environment.

One process per (library, inner steps, order): builds MAML's Omniglot network (Conv-4,
64 filters, stride 2, batch norm with batch statistics, spatial mean, linear head) as a
plain ``nn.Module``, loads the shared initial weights, and times meta-iterations on the
shared meta-batch the way each library's own MAML example does it: a Python loop over
tasks, one backward per task, then an Adam step. The first meta-gradient is saved so the
parent can compare it with metarch's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Shared with the benchmarks (runs in the peers' venv, which has torch and numpy too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import peak_rss_mb, rss_mb


class Conv4Strided(nn.Module):
    """MAML's Omniglot network with learn2learn's layout (batch statistics only)."""

    def __init__(self, ways: int, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [1, hidden, hidden, hidden, hidden]
        for i in range(4):
            layers += [
                nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1),
                nn.BatchNorm2d(channels[i + 1], track_running_stats=False),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, ways)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return logits


# Canonical names shared with metarch's side -> this module's parameter names.
def canonical_names(model: Conv4Strided) -> dict[str, str]:
    names = {}
    for i in range(4):
        names[f"conv{i}.weight"] = f"features.{3 * i}.weight"
        names[f"conv{i}.bias"] = f"features.{3 * i}.bias"
        names[f"bn{i}.weight"] = f"features.{3 * i + 1}.weight"
        names[f"bn{i}.bias"] = f"features.{3 * i + 1}.bias"
    names["head.weight"] = "head.weight"
    names["head.bias"] = "head.bias"
    return names


MetaGradient = Callable[[Tensor, Tensor, Tensor, Tensor], None]


def maml_learn2learn(model: nn.Module, steps: int, first_order: bool, lr: float) -> MetaGradient:
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)

    def meta_gradient(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> None:
        tasks = sx.shape[0]
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(sx[t]), sy[t]))
            (F.cross_entropy(learner(qx[t]), qy[t]) / tasks).backward()

    return meta_gradient


def maml_higher(model: nn.Module, steps: int, first_order: bool, lr: float) -> MetaGradient:
    import higher

    inner = torch.optim.SGD(model.parameters(), lr=lr)

    def meta_gradient(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> None:
        tasks = sx.shape[0]
        for t in range(tasks):
            with higher.innerloop_ctx(
                model, inner, copy_initial_weights=False, track_higher_grads=not first_order
            ) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(sx[t]), sy[t]))
                (F.cross_entropy(fmodel(qx[t]), qy[t]) / tasks).backward()

    return meta_gradient


def maml_torchopt(model: nn.Module, steps: int, first_order: bool, lr: float) -> MetaGradient:
    import torchopt

    if first_order:
        # MetaOptimizer.step always builds the graph of the inner step (create_graph=True);
        # its OOP API has no first-order mode to time.
        raise NotImplementedError("torchopt.MetaSGD has no first-order mode")
    inner = torchopt.MetaSGD(model, lr=lr)

    def meta_gradient(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> None:
        tasks = sx.shape[0]
        net_state = torchopt.extract_state_dict(model)
        opt_state = torchopt.extract_state_dict(inner)
        for t in range(tasks):
            for _ in range(steps):
                inner.step(F.cross_entropy(model(sx[t]), sy[t]))
            (F.cross_entropy(model(qx[t]), qy[t]) / tasks).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner, opt_state)

    return meta_gradient


IMPLEMENTATIONS = {
    "learn2learn": maml_learn2learn,
    "higher": maml_higher,
    "torchopt": maml_torchopt,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), required=True)
    parser.add_argument("--data", required=True, help="folder with weights.npz and batch.npz")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grad-out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    batch = {k: torch.from_numpy(v) for k, v in np.load(data / "batch.npz").items()}
    weights = np.load(data / "weights.npz")
    ways = int(batch["support_y"].max()) + 1
    model = Conv4Strided(ways)
    names = canonical_names(model)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for canonical, name in names.items():
            own[name].copy_(torch.from_numpy(weights[canonical]))
    try:
        meta_gradient = IMPLEMENTATIONS[args.impl](
            model, args.steps, args.first_order, args.inner_lr
        )
    except NotImplementedError as exc:
        print(json.dumps({"impl": args.impl, "unsupported": str(exc)}))
        return
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = (batch["support_x"], batch["support_y"], batch["query_x"], batch["query_y"])
    setup_rss = rss_mb()

    times = []
    for iteration in range(args.iterations + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        meta_gradient(*inputs)
        if iteration == 0 and args.grad_out:
            grads = {c: own[n].grad for c, n in names.items()}
            arrays = {c: g.detach().numpy() for c, g in grads.items() if g is not None}
            np.savez(Path(args.grad_out), **arrays)  # type: ignore[arg-type]
        optimizer.step()
        if iteration > 0:  # the first iteration warms up allocators and lazy imports
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "impl": args.impl,
                "seconds_per_iteration": float(np.median(times)),
                "peak_rss_mb": peak_rss_mb(),
                "setup_rss_mb": setup_rss,
            }
        )
    )


if __name__ == "__main__":
    main()
