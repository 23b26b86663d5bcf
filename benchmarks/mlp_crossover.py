"""Where the Python loop over tasks catches up with vmap for MLPs: the size rule of ``execution="auto"``.

Second-order MAML meta-gradients (one inner step, ``compile=False``: the eager paths themselves) of an
MLP ``17 -> width -> width -> 6`` (HalfCheetah's policy shape) on 25 tasks of ``rows`` random examples
(half support, half query), vmapped and looped; the best of 3 timed calls after one warm-up each.
``fastmaml.core.execution.decide`` loops where rows x widest layer exceeds ``VMAP_MAX_ACTIVATIONS``.

    PYTHONPATH=src python benchmarks/mlp_crossover.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fastmaml as fm
from fastmaml.core.execution import decide


def seconds(execution: str, width: int, rows: int) -> tuple[float, str]:
    torch.manual_seed(0)
    model = fm.models.MLP([17, width, width, 6])
    maml = fm.MAML(model, 0.1, 1, False, F.mse_loss, execution=execution, compile=False)
    half = rows // 2
    batch = fm.TaskBatch(torch.randn(25, half, 17), torch.randn(25, half, 6), torch.randn(25, half, 17),
                         torch.randn(25, half, 6))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        maml.zero_grad()
        maml.outer_loss(batch).backward()
        times.append(time.perf_counter() - start)
    return min(times[1:]), decide(model, *batch.tensors())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[40, 100, 256])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 500, 1000, 2000, 4000])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| width | rows per task | rows x width | vmap ms | loop ms | loop / vmap | auto picks |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for width in args.widths:
        for rows in args.rows:
            vmap, picked = seconds("vmap", width, rows)
            loop, _ = seconds("loop", width, rows)
            print(f"| {width} | {rows} | {rows * width:,} | {1e3 * vmap:.1f} | {1e3 * loop:.1f} | {loop / vmap:.2f} "
                  f"| {picked} |", flush=True)


if __name__ == "__main__":
    main()
