"""How close one meta-iteration on Omniglot 5-way 1-shot (Conv-4, one thread) comes to the cost of its
convolutions alone, for MAML, iMAML and Reptile at their recipes' settings (issue #12).

The bound: the forward+backward passes through Conv-4 that the algorithm cannot avoid, run as plain
batched ``model(x).backward()`` calls with one shared weight set (no per-task weights, no vmap, no
double backward): no implementation of the same algorithm does less arithmetic. Counted per meta-batch:

- MAML (1 second-order step, 32 tasks x 5 support + 5 query): the inner step's pass, the query pass and
  the backward through the inner step, about one more pass: 3 passes of 160 images.
- iMAML (the authors' regime, 16 tasks x 5 support + 25 query): 16 inner passes and the Hessian-vector
  set-up pass on 80 images, 5 Hessian-vector products at about two passes each (Pearlmutter: an HVP costs
  a small multiple of a gradient), one query pass on 400 images.
- Reptile (5 tasks x 50 images, 5 Adam steps on minibatches of 10): 5 passes of 50 images.

Both are timed in one process, interleaved round by round, so machine load falls on both alike; the
ratio (implementation / bound) is what a perfect implementation could gain at most. Multiplying a
measured hour's task count by the ratio gives the most tasks that hour could ever hold.

Usage:
    PYTHONPATH=src python benchmarks/hour_bound.py --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastmaml as fm
from fastmaml.algorithms import build

WAYS = 5
# name -> (meta-batch, support per class, query per class, algorithm options, bound passes [(images, count)])
SETTINGS = {
    "maml": (32, 1, 1, dict(inner_lr=0.4, inner_steps=1), [(160, 3)]),
    "imaml": (16, 1, 5, dict(inner_lr=0.1, inner_steps=16, lam=2.0, cg_steps=5, damping=1.0, lam_damping=10.0,
                             pull_back=True), [(80, 16 + 1 + 2 * 5), (400, 1)]),
    "reptile": (5, 1, 9, dict(inner_lr=0.001, inner_steps=5, inner_optimizer="adam", carry_moments=True,
                              inner_batch=10), [(50, 5)]),
}


def task_batch(tasks: int, shots: int, query: int, seed: int = 0) -> fm.TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return fm.TaskBatch(torch.randn(tasks, WAYS * shots, 1, 28, 28, generator=g), labels.repeat(tasks, shots),
                        torch.randn(tasks, WAYS * query, 1, 28, 28, generator=g), labels.repeat(tasks, query))


def conv4() -> torch.nn.Module:
    torch.manual_seed(0)
    return fm.models.Conv4(1, WAYS, 64, "stride", 28)


def measure(name: str, rounds: int, execution: str) -> tuple[float, float]:
    """Median seconds of one meta-iteration and of its bound, interleaved round by round."""
    tasks, shots, query, options, passes = SETTINGS[name]
    batch = task_batch(tasks, shots, query)
    algo = build(name, conv4(), execution=execution, **options)
    plain = conv4()
    inputs = [(torch.randn(n, 1, 28, 28), torch.arange(n) % WAYS, count) for n, count in passes]

    def implementation() -> None:
        algo.zero_grad(set_to_none=True)
        algo.outer_loss(batch).backward()

    def bound() -> None:
        for x, y, count in inputs:
            for _ in range(count):
                plain.zero_grad(set_to_none=True)
                F.cross_entropy(plain(x), y).backward()

    times: dict = {implementation: [], bound: []}
    for fn in times:  # warm-up
        fn()
        fn()
    for round_ in range(rounds):
        for fn in (implementation, bound) if round_ % 2 == 0 else (bound, implementation):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[implementation]), statistics.median(times[bound])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--execution", default="vmap", choices=["vmap", "loop"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, execution={args.execution}, median of {args.rounds} rounds")
    print("| algorithm | tasks per meta-batch | implementation s | bound s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.algorithms:
        impl_s, bound_s = measure(name, args.rounds, args.execution)
        print(f"| {name} | {SETTINGS[name][0]} | {impl_s:.3f} | {bound_s:.3f} | {impl_s / bound_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
