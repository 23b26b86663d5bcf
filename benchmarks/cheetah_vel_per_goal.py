"""A ``cheetah-vel`` run on the paper's own 40 test goals, goal by goal beside the paper's returns.

cbfinn/maml_rl's test script draws its goals with ``np.random.seed(1); np.random.uniform(0, 2, 40)`` and
commits the average return per goal (``icml/icml_cheetah_results_maml.pkl``, 20 trajectories per inner
step). This script adapts the run's meta-trained policy on the same goals (one inner step, the run's
``eval_trajectories`` or ``trajectories`` per step) and prints both by goal range.

    python benchmarks/cheetah_vel_per_goal.py RUN_DIR PATH/TO/icml_cheetah_results_maml.pkl

The pickle comes from a checkout of cbfinn/maml_rl (a Python 2 pickle of numpy arrays); nothing is downloaded.
"""

import pickle
import sys

import numpy as np
import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl import train as runs
from fastmaml.rl.evaluate import returns_by_step
from paper_goals import paper_goals

RANGES = [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0)]


def main(run: str, paper_pickle: str) -> None:
    tasks = paper_goals("half-cheetah-vel")  # cbfinn/maml_rl, maml_examples/test_maml_cheetah.py
    goals = np.array([task["velocity"] for task in tasks])
    with open(paper_pickle, "rb") as f:
        paper = np.array(pickle.load(f, encoding="latin1")["task_avg_returns"]).T  # (40 goals, 4 steps)
    config = rlcfg.load(f"{run}/config.yaml")
    learner = runs.load(run)
    learner.trajectories = config.test_trajectories
    family = runs.build_family(config)
    ours = returns_by_step(learner, family, tasks, 1, torch.Generator().manual_seed(7)).numpy()
    print(f"{run}: the paper's 40 goals, {learner.trajectories} trajectories per step (mean return)")
    print(f"{'goals':>10} {'n':>3} {'ours before':>12} {'ours 1 step':>12} {'paper before':>13} {'paper 1 step':>13}")
    for low, high in RANGES:
        chosen = (goals >= low) & (goals < high)
        mine, theirs = ours[chosen].mean(0), paper[chosen].mean(0)
        print(f"{low:4.1f}-{high:3.1f}  {chosen.sum():3d} {mine[0]:12.1f} {mine[1]:12.1f} "
              f"{theirs[0]:13.1f} {theirs[1]:13.1f}")
    print(f"{'all':>10} {len(goals):3d} {ours[:, 0].mean():12.1f} {ours[:, 1].mean():12.1f} "
          f"{paper[:, 0].mean():13.1f} {paper[:, 1].mean():13.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
