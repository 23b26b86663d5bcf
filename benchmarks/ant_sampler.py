"""Sampler speed on Ant: environment steps per second of one sampling pass of the ``ant-dir`` recipe.

The workload is one meta-batch of the recipe's sampling: ``--tasks`` (40) direction tasks x ``--trajectories``
(40) episodes of ``--horizon`` steps, every episode of every task in lockstep (``AntDir.rollout``, what
``fastmaml train ant-dir`` runs), with the recipe's policy (2 x 100 ReLU, Gaussian) at its initial weights,
actions sampled from it. Episodes that end early stop being stepped, so the rate counts live steps only.
``--physics rllab`` runs maml_rl's ``ant.xml`` at its one 0.02 s step, ``v5`` Ant-v5's at two 0.01 s steps,
the same clock; both read rllab's observation and centre-of-mass velocity, which need MuJoCo's ``forward()`` at
every new state (``fastmaml.rl.ant.probe``, one environment at a time, on ``--threads`` threads).

Run from the repository root at the commits to compare (a ``git worktree`` of each on PYTHONPATH), on idle
cores; the best of ``--repeats`` passes (commits and results: benchmarks/RESULTS.md, "Meta-RL: Ant")::

    PYTHONPATH=src python benchmarks/ant_sampler.py --physics rllab --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from rl_sampler import act_fn  # the HalfCheetah sampler benchmark's policy sampling

from fastmaml import recipes
from fastmaml.rl import config as rlcfg
from fastmaml.rl import train as runs

FRAME_SKIP = {"v5": 2, "rllab": 1}  # the paper's 0.02 s step on each physics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--physics", choices=sorted(FRAME_SKIP), default="rllab")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--trajectories", type=int, default=40)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = rlcfg.load(Path(recipes.__file__).parent / "ant-dir.yaml")
    options = {**config.env_options, "physics": args.physics, "frame_skip": FRAME_SKIP[args.physics]}
    config = dataclasses.replace(config, env_options=options, threads=args.threads, horizon=args.horizon)
    family = runs.build_family(config)
    policy = runs.build_learner(config, family, seed=0).policy
    tasks = family.sample_tasks(args.tasks, torch.Generator().manual_seed(0))
    best, steps = float("inf"), 0
    for _ in range(args.repeats):
        generator = torch.Generator().manual_seed(1)  # every pass the same episodes
        start = time.perf_counter()
        episodes = family.rollout(act_fn(policy, generator), tasks, args.trajectories, args.horizon, torch.float32,
                                  generator)
        best = min(best, time.perf_counter() - start)
        steps = int(episodes.mask.sum())
    print(f"physics={args.physics} threads={args.threads} {args.tasks}x{args.trajectories}x{args.horizon}: "
          f"{steps} live steps, best of {args.repeats} {best:.2f} s, {steps / best:,.0f} steps/s")


if __name__ == "__main__":
    main()
