"""Ant's two physics (``env_options.physics``) and two batches (``budget``) under the ``ant-dir`` recipe's
MDP: how fast plain TRPO learns to run forward with each, from the same initial policy and seed.

``v5`` is Ant-v5's model at the paper's clock (two RK4 steps of 0.01 s per step, MuJoCo's default contact
softness); ``rllab`` is maml_rl's ``ant.xml`` (one RK4 step of 0.02 s, solimp 0.8 0.8 0.01 on every geom).
Both run rllab's observation, start pose and centre-of-mass velocity (the recipe's options), and the
direction family with every task forward (d = +1): the oracle's task, without meta-learning. Each
iteration samples ``--tasks`` x ``--trajectories`` episodes of 200 steps and takes one TRPO step (the
recipe's KL bound, conjugate-gradient and line-search settings); ``--budget steps`` samples ``--trajectories``
x 200 steps per task instead, in as many complete episodes as that takes (maml_rl's batch). The table prints,
every ``--every`` iterations, the mean return of the episodes the iteration sampled and, with ``--budget``
steps (whose batches hold more, shorter episodes where episodes end early), of ``--tasks`` x
``--trajectories`` fresh episodes of the policy after it, the same count for every batch; and the mean seconds
per iteration (without those).

    python benchmarks/ant_physics.py --iterations 100 --seed 1      # both physics, ~20 min on one core
    python benchmarks/ant_physics.py --physics rllab --budget trajectories steps --seed 1
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
from fastmaml.rl.sampler import collect

PHYSICS = {"v5": 2, "rllab": 1}  # physics: frame_skip, the paper's 0.02 s step on each


def forward_curve(physics: str, budget: str, iterations: int, seed: int, tasks: int, trajectories: int, every: int
                  ) -> tuple[list, list, float]:
    """Mean return per TRPO iteration on forward running (of its batch; and every ``every`` iterations of
    fresh episodes, a fixed count of them), and the mean seconds per iteration."""
    config = rlcfg.load(Path(recipes.__file__).parent / "ant-dir.yaml")
    options = {**config.env_options, "physics": physics, "frame_skip": PHYSICS[physics]}
    config = dataclasses.replace(config, env_options=options, meta_batch_size=tasks, trajectories=trajectories)
    family = runs.build_family(config)
    family.sample_tasks = lambda n, generator: [{"direction": 1}] * n  # the oracle's task: forward
    policy = runs.build_learner(config, family, seed).policy
    learner = MetaRL(policy, config.inner_lr, 0, config.first_order, config.gamma, config.gae_lambda,
                     config.trajectories, config.horizon, config.normalize_advantages, "loop", budget=budget)
    generator = torch.Generator().manual_seed(seed + 2)
    scored = torch.Generator().manual_seed(seed + 3)
    tasks_ = family.sample_tasks(tasks, scored)
    returns, fresh, seconds = [], [], 0.0
    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        row = runs.meta_step(learner, family, config, generator, None, iteration, "none")
        seconds += time.perf_counter() - start
        returns.append(row["return_after"])  # no inner step: the one return
        if iteration % every == 0:
            episodes = collect(family, policy, learner.params(), tasks_, trajectories, config.horizon, scored)
            fresh.append(episodes.returns().mean().item())
    return returns, fresh, seconds / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--physics", nargs="+", choices=list(PHYSICS), default=list(PHYSICS))
    parser.add_argument("--budget", nargs="+", choices=["trajectories", "steps"], default=["trajectories"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves = {f"{physics}, {budget}": forward_curve(physics, budget, args.iterations, args.seed, args.tasks,
                                                    args.trajectories, args.every)
              for physics in args.physics for budget in args.budget}
    shown = range(args.every, args.iterations + 1, args.every)
    print(f"ant-dir's MDP, forward only, TRPO from seed {args.seed}: {args.tasks} x {args.trajectories} episodes "
          "per iteration; mean return at iteration")
    print(f"{'physics, budget':<27}" + "".join(f"{i:>7}" for i in shown) + f"{'s/it':>7}")
    for name, (returns, fresh, seconds) in curves.items():
        print(f"{name + ': batch':<27}" + "".join(f"{returns[i - 1]:7.1f}" for i in shown) + f"{seconds:7.1f}")
        if "steps" in args.budget:
            print(f"{name + ': fresh':<27}" + "".join(f"{value:7.1f}" for value in fresh))


if __name__ == "__main__":
    main()
