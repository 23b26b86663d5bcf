"""The cost of fastmaml's exact routes (``fastmaml.core.exact``): routed against torch's native kernels.

For each workload and path, one meta-iteration (``maml.outer_loss(batch).backward()``) is timed with the
routing on (what fastmaml runs) and off (``maml.exact_bn = False``: torch's kernels as they are, which
under vmap give a wrong second-order meta-gradient for layer/instance norm, and which cannot take a
second-order meta-gradient at all through fused attention or ``F.embedding_bag``; those rows time first
order only, where the native kernels work). Also the float64 relative error of the native vmap
meta-gradient against the loop (which is exact), to show what the route buys.

Every configuration times the same weights and data; the fastest of ``--iters`` iterations after 2
warm-up ones, in CPU milliseconds (``time.process_time``) and wall milliseconds: on a machine shared with
other jobs the minimum is what the code costs, the median mostly what the neighbours cost.

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/exact_routes.py --iters 20 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastmaml as fm


class OwnForwardMLP(nn.Module):
    """The sinusoid MLP with its own ``forward``: fastmaml cannot see what it calls, so it routes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = fm.models.MLP([1, 40, 40, 1])

    def forward(self, x):
        return self.net(x)


def sinusoid(tasks: int = 25):
    return fm.Sinusoid(shots=10).sample_tasks(tasks, torch.Generator().manual_seed(0))


def signals(tasks: int = 25):
    """1-D signals (tasks, 20, 1, 32) with a regression target: for the instance-norm Conv1d."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tasks, 20, 1, 32, generator=g)
    y = x.mean(-1) * torch.randn(tasks, 1, 1, generator=g)
    return fm.TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])


def sequences(tasks: int = 16, vocab: int = 16):
    return fm.tasks.TokenSequences(ways=5, shots=1, query_shots=5, vocab=vocab).sample_tasks(
        tasks, torch.Generator().manual_seed(0))


def layernorm_mlp():
    return nn.Sequential(nn.Linear(1, 40), nn.LayerNorm(40), nn.ReLU(), nn.Linear(40, 40), nn.LayerNorm(40),
                         nn.ReLU(), nn.Linear(40, 1))


def instancenorm_conv():
    return nn.Sequential(nn.Conv1d(1, 16, 3), nn.InstanceNorm1d(16, affine=True), nn.ReLU(), nn.Conv1d(16, 16, 3),
                         nn.InstanceNorm1d(16, affine=True), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 28, 1))


def bag_model():
    return nn.Sequential(nn.EmbeddingBag(64, 32, mode="mean"), nn.ReLU(), nn.Linear(32, 5))


# name -> (model factory, batch factory, inner_lr, orders where the native kernel runs)
WORKLOADS = {
    "layernorm-mlp": (layernorm_mlp, sinusoid, 0.01, ("second", "first")),
    "instancenorm-conv1d": (instancenorm_conv, signals, 0.01, ("second", "first")),
    "transformer": (lambda: fm.models.SequenceTransformer(vocab=16, ways=5), sequences, 0.4, ("first",)),
    "embedding-bag": (bag_model, lambda: sequences(vocab=64), 0.4, ("first",)),
    "own-forward-mlp": (OwnForwardMLP, sinusoid, 0.01, ("second", "first")),
}


def time_one(model, batch, lr: float, first_order: bool, execution: str, routed: bool, iters: int):
    maml = fm.MAML(model, lr, 1, first_order, execution=execution)
    maml.exact_bn = routed
    cpu, wall = [], []
    for i in range(iters + 2):
        maml.zero_grad(set_to_none=True)
        c, w = time.process_time(), time.perf_counter()
        maml.outer_loss(batch).backward()
        if i >= 2:
            cpu.append(1000 * (time.process_time() - c))
            wall.append(1000 * (time.perf_counter() - w))
    return min(cpu), min(wall)


def native_vmap_error(make, batch_of, lr: float) -> float:
    """Relative error (float64) of the native vmap second-order meta-gradient against the loop's."""
    torch.manual_seed(0)
    model = make().double()
    batch = batch_of().to(dtype=torch.float64)
    grads = {}
    for execution, routed in (("loop", True), ("vmap", False)):
        maml = fm.MAML(model, lr, 1, False, execution=execution)
        maml.exact_bn = routed
        model.zero_grad(set_to_none=True)
        maml.outer_loss(batch).backward()
        grads[execution] = torch.cat([p.grad.flatten() for p in model.parameters()])
    return ((grads["vmap"] - grads["loop"]).norm() / grads["loop"].norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fastest of {args.iters} iterations")
    print("| workload | order | path | routed CPU ms | native CPU ms | cost of the route | routed wall ms | "
          "native wall ms | native vmap error (float64) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for name in args.workloads:
        make, batch_of, lr, native_orders = WORKLOADS[name]
        error = native_vmap_error(make, batch_of, lr) if "second" in native_orders else None
        for order in ("second", "first"):
            for execution in ("vmap", "loop"):
                torch.manual_seed(0)
                model, batch = make(), batch_of()
                routed = time_one(model, batch, lr, order == "first", execution, True, args.iters)
                if order in native_orders:
                    native = time_one(model, batch, lr, order == "first", execution, False, args.iters)
                    cells = f"{native[0]:.1f} | {routed[0] / native[0]:.2f}x | {routed[1]:.1f} | {native[1]:.1f}"
                else:
                    cells = f"fails (no double backward) | - | {routed[1]:.1f} | -"
                shown = f"{error:.1e}" if error is not None and execution == "vmap" and order == "second" else "-"
                print(f"| {name} | {order} | {execution} | {routed[0]:.1f} | {cells} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
