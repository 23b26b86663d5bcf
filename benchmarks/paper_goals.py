"""A locomotion run (recipes ``ant-vel``, ``ant-dir``, ``cheetah-vel``, ``cheetah-dir``) on the paper's 40 test goals.

cbfinn/maml_rl's test scripts draw their goals with ``np.random.seed(s); np.random.uniform(0, high, 40)``:
seed 1 and high 3 for Ant goal velocities (``maml_examples/test_maml_ant.py``), seed 2 and high 3 for Ant
directions (``test_maml_ant_direc.py``), seed 1 and high 2 for HalfCheetah velocities and directions
(``test_maml_cheetah.py``, ``test_maml_cheetah_direc.py``). They commit the average return per goal and inner
step (``icml/icml_{ant,antdirec,cheetah,cheetahdirec}_results_{maml,pretrain,random,oracle}.pkl``). The direction
pickles were written before those scripts took their final form (commit 4d41869): by scripts that drew
``np.random.uniform(0.1, 0.8, 40)`` with the same seed, in environments that ran backward below 0.4 (commits
7fe27d7-4d41869; ``goal < high / 2`` came later, 7a92e6e). The same draws, so a direction goal is backward below
3/7 of the range, not 1/2: that moves 5 of Ant direction's 40 goals (20 forward and 20 backward, not 15 and 25)
and none of HalfCheetah's. The pickles agree: their pretrained and random policies' returns before adaptation take
one value per direction, and split the goals there. This script
adapts the run's meta-trained policy and its baselines on the same goals (the run's ``eval_trajectories`` per
step, every method on the same sampling noise) and prints mean ± 95% CI over the goals per inner step, beside
the paper's, and the paired difference per goal between the meta-trained policy and each baseline; for the
direction families, then the same per direction (forward goals, backward goals).

    python benchmarks/paper_goals.py RUN_DIR PATH/TO/maml_rl/icml [--steps 3] [--budget steps] \
        [--trajectories 43] [--iteration 575]

``--budget steps`` samples as the paper's test scripts do: their ``VPG(batch_size=8000, max_path_length=200)``
collects 8,000 environment steps per goal and step (``eval_trajectories`` × ``horizon``), in as many complete
episodes as that takes, where the run's own budget (``trajectories`` unless its config says otherwise) samples
``eval_trajectories`` episodes however short. rllab's sampler overshoots its threshold: each of the test's
``n_parallel`` workers (4) finishes the path it is on, so the paper adapted on 3 paths more than the threshold's
(43 of 200 steps for Ant direction's 8,000); ``--trajectories 43`` samples that (benchmarks/RESULTS.md,
"Meta-RL: Ant"). ``--iteration N`` scores the policy the run kept at iteration N (``keep_every``; the paper's
test scripts scored the launchers' ``itr_575`` and ``itr_375`` snapshots of 800-iteration runs).

The pickles come from a checkout of cbfinn/maml_rl (Python 2 pickles); nothing is downloaded.
"""

import argparse
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import torch

from fastmaml.rl import config as rlcfg
from fastmaml.rl import train as runs
from fastmaml.rl.evaluate import returns_by_step
from fastmaml.rl.sampler import BUDGETS
from fastmaml.train.evaluate import mean_ci95

PAPER = {  # pickle prefix, goal seed, goals ~ U(0, high)
    "ant-vel": ("icml_ant_results_", 1, 3.0),
    "ant-dir": ("icml_antdirec_results_", 2, 3.0),
    "half-cheetah-vel": ("icml_cheetah_results_", 1, 2.0),
    "half-cheetah-dir": ("icml_cheetahdirec_results_", 1, 2.0),
}
METHODS = {"maml": "maml", "pretrained": "pretrain", "random": "random", "oracle": "oracle"}  # ours: the paper's


def paper_goals(env: str) -> list[dict]:
    """The 40 tasks of the paper's test script for ``env`` (a key of ``PAPER``)."""
    _, seed, high = PAPER[env]
    np.random.seed(seed)
    if env.endswith("-vel"):
        return [{"velocity": float(g)} for g in np.random.uniform(0.0, high, size=(40,))]
    # the draws and the environments that wrote the direction pickles (see the module's docstring)
    return [{"direction": -1 if g < 0.4 else 1} for g in np.random.uniform(0.1, 0.8, size=(40,))]


def cell(values: np.ndarray) -> str:
    mean, ci95 = mean_ci95(torch.as_tensor(values))
    return f"{mean:8.1f} ± {ci95:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("icml", help="the icml/ folder of a cbfinn/maml_rl checkout")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--budget", choices=BUDGETS, default=None,
                        help="episodes (trajectories) or environment steps (steps, the paper's test scripts') per "
                             "goal and inner step; default: the run's config")
    parser.add_argument("--trajectories", type=int, default=None,
                        help="episodes per goal and inner step (with --budget steps: that many times the horizon "
                             "in environment steps); default: the run's eval_trajectories")
    parser.add_argument("--iteration", type=int, default=None,
                        help="score the policy the run kept at this iteration (keep_every); default: its last")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as RESULTS.md's scores: another count sums float32 in "
                             "another order, which moves a score by noise, e.g. 490.3 for 490.5)")
    args = parser.parse_args()
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}; use 1 or more")
    torch.set_num_threads(args.threads)
    config = rlcfg.load(Path(args.run) / "config.yaml")
    if args.trajectories is not None:
        config = dataclasses.replace(config, eval_trajectories=args.trajectories)
    if config.env not in PAPER:
        raise SystemExit(f"{args.run} trains env={config.env}; this script compares {', '.join(PAPER)} runs")
    family = runs.build_family(config)
    tasks = paper_goals(config.env)
    try:
        learners = {"maml": runs.load(args.run, "last" if args.iteration is None else args.iteration)}
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    if (Path(args.run) / runs.BASELINES).is_file():
        learners.update(runs.baselines(Path(args.run), config, family))
    budget = args.budget or config.budget
    amount = (f"{config.test_trajectories * config.horizon} environment steps in episodes of up to {config.horizon}"
              if budget == "steps" else f"{config.test_trajectories} trajectories of {config.horizon} steps")
    kept = "" if args.iteration is None else f" at iteration {args.iteration}"
    print(f"{args.run}{kept}: the paper's 40 goals, {amount} per inner step (mean ± 95% CI over goals)")
    print(f"{'method':<22}" + "".join(f"{f'{k} steps':>18}" for k in range(args.steps + 1)))
    ours = {}
    for name, learner in learners.items():
        learner.trajectories, learner.budget = config.test_trajectories, budget
        ours[name] = returns_by_step(learner, family, tasks, args.steps, torch.Generator().manual_seed(7)).numpy()
        print(f"{name:<22}" + "".join(f"{cell(ours[name][:, k]):>18}" for k in range(args.steps + 1)))
    for name in [n for n in ours if n != "maml"]:  # the same goals and noise: paired per goal
        paired = ours["maml"] - ours[name]
        print(f"{'maml - ' + name:<22}" + "".join(f"{cell(paired[:, k]):>18}" for k in range(args.steps + 1)))
    papers = {}
    for name, theirs in METHODS.items():
        path = Path(args.icml) / f"{PAPER[config.env][0]}{theirs}.pkl"
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            papers[name] = np.array(pickle.load(f, encoding="latin1")["task_avg_returns"]).T  # (40 goals, steps)
        shown = range(min(papers[name].shape[1], args.steps + 1))  # the oracle has one column
        print(f"{'paper ' + name:<22}" + "".join(f"{cell(papers[name][:, k]):>18}" for k in shown))
    if config.env.endswith("-dir"):
        by_direction(tasks, ours, papers, args.steps)


def by_direction(tasks: list[dict], ours: dict, papers: dict, steps: int) -> None:
    """The same rows over the forward goals, then the backward goals (mean ± 95% CI over each direction's goals)."""
    direction = np.array([task["direction"] for task in tasks])
    rows = {**ours, **{"paper " + name: paper for name, paper in papers.items()}}
    for sign, label in [(1, "forward"), (-1, "backward")]:
        goals = direction == sign
        print(f"{label} goals only ({goals.sum()} of {len(tasks)})")
        for name, values in rows.items():
            shown = range(min(values.shape[1], steps + 1))
            print(f"{name:<22}" + "".join(f"{cell(values[goals, k]):>18}" for k in shown))


if __name__ == "__main__":
    main()
