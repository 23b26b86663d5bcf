"""Compare finished runs task by task on the same meta-test tasks: accuracy and the paired difference.

Two runs meta-tested on the same seeded test tasks share the task-sampling noise, so the difference
of their accuracies is known much more precisely than either accuracy's interval suggests. For each
run (its ``best.pt``, or ``--which last``) this adapts to the same ``--tasks`` test tasks of the first
run's recipe with the first run's ``eval_inner_steps``, and prints the mean accuracy ± 95% CI and,
against the first run, the mean per-task difference ± 95% CI (normal approximation over tasks).

    PYTHONPATH=src python benchmarks/paired_eval.py runs/fm-5w1s-q5 runs/mamlpp-5w1s-q5 runs/maml-constant
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fastmaml as fm
from fastmaml.train import config as config_io
from fastmaml.train.build import build_tasks, task_generator
from fastmaml.train.evaluate import mean_ci95, task_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the reference")
    parser.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of each run")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {run: config_io.load(run / "config.yaml") for run in args.runs}
    config = configs[args.runs[0]]
    for run in args.runs[1:]:
        if configs[run].data != config.data:
            raise SystemExit(f"error: {run} was trained on other data than {args.runs[0]}; compare runs of one recipe")
    tasks, steps = build_tasks(config, "test"), config.eval_inner_steps
    print(
        f"# {args.tasks} test tasks of {args.runs[0]}'s recipe (seed {config.seed}), {args.which}.pt, "
        f"accuracy after {steps} steps, mean ± 95% CI"
    )
    print("| run | algorithm | accuracy % | difference to the first run (paired) |")
    print("|---|---|---|---|")
    reference = None
    for run in args.runs:
        algorithm = fm.load(run, which=args.which)
        _, accuracy = task_scores(algorithm, tasks, args.tasks, steps, task_generator(config, "test"))
        if accuracy is None:
            raise SystemExit(f"error: {run} is a regression run; paired accuracy needs classification")
        final = accuracy[:, -1]
        mean, ci = mean_ci95(final)
        if reference is None:
            reference, difference = final, "–"
        else:
            d_mean, d_ci = mean_ci95(final - reference)
            difference = f"{d_mean:+.2f} ± {d_ci:.2f}"
        print(f"| {run} | {configs[run].algorithm} | {mean:.2f} ± {ci:.2f} | {difference} |", flush=True)


if __name__ == "__main__":
    main()
