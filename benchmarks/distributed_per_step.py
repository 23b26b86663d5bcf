"""How far one meta-gradient moves when a meta-batch is split over processes, against re-ordering it.

The sinusoid recipe's model and meta-batch (25 tasks, MLP 1-40-40-1, one inner step of 0.01, float64, one
thread), ``--batches`` fresh meta-batches. For each, the relative difference ``|g - g_one| / |g_one|``
of the whole meta-batch's gradient ``g_one`` (eager step) against:

- ``shards``: the sum of the two shards' gradients, 13 + 12 tasks (``TaskBatch.shard``: each shard's
  task losses over the whole batch's 25, what ``--nproc-per-node 2`` all-reduces);
- ``scaled means``: the two halves' mean gradients weighted 13/25 and 12/25 (fastmaml's all-reduce
  up to commit b6abdbd, before ``TaskBatch.total``);
- ``compiled``: the same whole batch through the compiled step (another summation order, one process).

It measures the per-step rounding a split adds, which long runs then amplify (distributed_same_model.py).

    PYTHONPATH=src python benchmarks/distributed_per_step.py --batches 200
"""

from __future__ import annotations

import argparse

import torch

import fastmaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = fastmaml.models.MLP([1, 40, 40, 1]).double()
    eager = fastmaml.MAML(model, inner_lr=0.01, inner_steps=1, compile=False)
    compiled = fastmaml.MAML(model, inner_lr=0.01, inner_steps=1, compile=True)
    params = list(model.parameters())
    tasks, generator = fastmaml.Sinusoid(dtype=torch.float64), torch.Generator().manual_seed(args.seed)

    def gradient(algorithm, batch) -> torch.Tensor:
        algorithm.zero_grad()
        algorithm.outer_loss(batch).backward()
        return torch.cat([p.grad.flatten() for p in params])

    rows: dict[str, list[float]] = {"shards": [], "scaled means": [], "compiled": []}
    gradient(compiled, tasks.sample_tasks(25, torch.Generator().manual_seed(-1)))  # compile=True: 2nd call compiles
    for _ in range(args.batches):
        batch = tasks.sample_tasks(25, generator)
        one = gradient(eager, batch)
        split = {
            "shards": gradient(eager, batch.shard(0, 2)) + gradient(eager, batch.shard(1, 2)),
            "scaled means": gradient(eager, batch[:13]) * (13 / 25) + gradient(eager, batch[13:]) * (12 / 25),
            "compiled": gradient(compiled, batch),
        }
        for name, g in split.items():
            rows[name].append(((g - one).norm() / one.norm()).item())
    print("| against the whole batch, eager | mean relative difference | max | exactly equal |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        v = torch.tensor(values)
        print(f"| {name} | {v.mean():.2e} | {v.max():.2e} | {int((v == 0).sum())}/{len(v)} |")


if __name__ == "__main__":
    main()
