"""Meta-training throughput with 1 vs 2 processes (torch.distributed, gloo, CPU) on the Conv-4 workload.

Workload: ``fastmaml.models.Conv4()``, 5-way 1-shot, 15 query examples per class, 28x28 random
images, meta-batch 32, one inner step with inner_lr 0.4, second order, Adam. Each configuration runs
the library's own loop (``meta_train`` with a ``distributed.Context``), so the all-reduce measured is
the one training uses. Reports tasks/s and the communication share of an iteration: time inside
the gradient all-reduce (which includes waiting for the slower rank) over iteration time, plus the
cost of the all-reduce alone (ranks lined up by a barrier first).

    PYTHONPATH=src python benchmarks/scaling.py --iterations 6
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

import fastmaml as fm
from fastmaml.train import distributed
from fastmaml.train.outer import meta_train

WAYS, SHOTS, QUERY, SIDE, META_BATCH = 5, 1, 15, 28, 32


class RandomImages:
    """5-way episodes of Gaussian-noise images: the Omniglot shapes without the data."""

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> fm.TaskBatch:
        def side(shots: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(tasks, WAYS * shots, 1, SIDE, SIDE, generator=generator)  # (tasks, ways*shots, 1, 28, 28)
            y = torch.arange(WAYS).repeat_interleave(shots).expand(tasks, -1)
            return x, y

        return fm.TaskBatch(*side(SHOTS), *side(QUERY))


def worker(rank: int, world: int, threads: int, warmup: int, iterations: int, port: int, out: str) -> None:
    torch.set_num_threads(threads)
    context = distributed.Context(rank, world)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        context.owns_group = True
    torch.manual_seed(0)
    maml = fm.MAML(fm.models.Conv4(), inner_lr=0.4, inner_steps=1)
    optimizer = torch.optim.Adam(maml.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    kwargs = dict(meta_batch_size=META_BATCH, dist=context, progress=False, log_every=10**9)
    state = meta_train(maml, optimizer, RandomImages(), generator, iterations=warmup, **kwargs)
    context.comm_seconds = 0.0
    start = time.perf_counter()
    meta_train(maml, optimizer, RandomImages(), generator, iterations=warmup + iterations, state=state, **kwargs)
    elapsed = time.perf_counter() - start
    pure = 0.0
    if world > 1:  # the all-reduce alone: same buffer size, ranks lined up first
        flat = torch.cat([p.detach().reshape(-1) for p in maml.parameters()])
        for _ in range(20):
            torch.distributed.barrier()
            t = time.perf_counter()
            torch.distributed.all_reduce(flat)
            pure += (time.perf_counter() - t) / 20
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "elapsed": elapsed, "comm": context.comm_seconds, "pure_allreduce_s": pure}))
    context.close(barrier=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, threads: int, warmup: int, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, threads, warmup, iterations, free_port(), out), nprocs=world, join=True)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    elapsed = max(r["elapsed"] for r in ranks)
    return {
        "processes": world, "threads_per_process": threads,
        "tasks_per_s": iterations * META_BATCH / elapsed, "s_per_iteration": elapsed / iterations,
        "comm_share": sum(r["comm"] / r["elapsed"] for r in ranks) / world,
        "pure_allreduce_ms": 1000 * ranks[0]["pure_allreduce_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    params = sum(p.numel() for p in fm.models.Conv4().parameters())
    print(f"Conv-4 ({params} parameters), {WAYS}-way {SHOTS}-shot, {QUERY} query/class, meta-batch {META_BATCH}, "
          f"1 inner step (lr 0.4), second order; {args.iterations} timed iterations after {args.warmup} warm-up; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'processes':>9} {'threads/proc':>12} {'tasks/s':>8} {'s/iter':>7} {'comm share':>10} {'all-reduce':>11}")
    for world, threads in ((1, 1), (1, 2), (2, 1)):
        r = measure(world, threads, args.warmup, args.iterations)
        print(f"{r['processes']:>9} {r['threads_per_process']:>12} {r['tasks_per_s']:>8.1f} "
              f"{r['s_per_iteration']:>7.2f} {100 * r['comm_share']:>9.1f}% {r['pure_allreduce_ms']:>8.2f} ms",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
