"""Ant's two physics (``env_options.physics``) under the ``ant-dir`` recipe's MDP: how fast plain TRPO
learns to run forward on each, from the same initial policy and seed.

``v5`` is Ant-v5's model at the recipe's clock (two RK4 steps of 0.01 s per step, MuJoCo's default contact
softness); ``rllab`` is maml_rl's ``ant.xml`` (one RK4 step of 0.02 s, solimp 0.8 0.8 0.01 on every geom).
Both run rllab's observation, start pose and centre-of-mass velocity (the recipe's options), and the
direction family with every task forward (d = +1): the oracle's task, without meta-learning. Each
iteration samples ``--tasks`` x ``--trajectories`` episodes of 200 steps and takes one TRPO step (the
recipe's KL bound, conjugate-gradient and line-search settings); the table prints the mean return every
``--every`` iterations and the mean seconds per iteration.

    python benchmarks/ant_physics.py --iterations 100 --seed 1      # ~20 min on one core
"""

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from fastmaml import recipes
from fastmaml.rl import config as rlcfg
from fastmaml.rl import train as runs
from fastmaml.rl.learner import MetaRL

PHYSICS = {"v5": 2, "rllab": 1}  # physics: frame_skip, the paper's 0.02 s step on each


def forward_curve(physics: str, iterations: int, seed: int, tasks: int, trajectories: int) -> tuple[list, float]:
    """Mean return per TRPO iteration on forward running, and the mean seconds per iteration."""
    config = rlcfg.load(Path(recipes.__file__).parent / "ant-dir.yaml")
    options = {**config.env_options, "physics": physics, "frame_skip": PHYSICS[physics]}
    config = dataclasses.replace(config, env_options=options, meta_batch_size=tasks, trajectories=trajectories)
    family = runs.build_family(config)
    family.sample_tasks = lambda n, generator: [{"direction": 1}] * n  # the oracle's task: forward
    policy = runs.build_learner(config, family, seed).policy
    learner = MetaRL(policy, config.inner_lr, 0, config.first_order, config.gamma, config.gae_lambda,
                     config.trajectories, config.horizon, config.normalize_advantages, "loop")
    generator = torch.Generator().manual_seed(seed + 2)
    returns, seconds = [], 0.0
    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        row = runs.meta_step(learner, family, config, generator, None, iteration, "none")
        seconds += time.perf_counter() - start
        returns.append(row["return_after"])  # no inner step: the one return
    return returns, seconds / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves = {name: forward_curve(name, args.iterations, args.seed, args.tasks, args.trajectories)
              for name in PHYSICS}
    shown = range(args.every, args.iterations + 1, args.every)
    print(f"ant-dir's MDP, forward only, TRPO from seed {args.seed}: {args.tasks} x {args.trajectories} episodes "
          "per iteration; mean return at iteration")
    print(f"{'physics':<8}" + "".join(f"{i:>7}" for i in shown) + f"{'s/it':>7}")
    for name, (returns, seconds) in curves.items():
        print(f"{name:<8}" + "".join(f"{returns[i - 1]:7.1f}" for i in shown) + f"{seconds:7.1f}")


if __name__ == "__main__":
    main()
