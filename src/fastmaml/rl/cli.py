"""What the ``fastmaml`` command needs to know about meta-RL recipes and runs (``kind: rl``):
whether a command concerns one, and the functions that train, evaluate, plot and summarise it.
:mod:`fastmaml.cli` dispatches every kind of run with the same code."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastmaml.rl import config as rlcfg


def handles(args: argparse.Namespace) -> bool:
    """Whether the parsed command concerns a meta-RL recipe or run folder."""
    if args.command == "train":
        return rlcfg.is_rl_run(args.resume) if args.resume is not None else rlcfg.is_rl_recipe(args.recipe)
    if args.command in ("eval", "plot"):
        return rlcfg.is_rl_run(args.run_dir)
    return False


def resolve(recipe: str, overrides: list[str]) -> rlcfg.RLConfig:
    return rlcfg.resolve(recipe, overrides)


def load_config(run_dir: Path) -> rlcfg.RLConfig:
    return rlcfg.load(run_dir / "config.yaml")


def train(config: rlcfg.RLConfig, out: Path, overwrite: bool, progress: bool) -> dict | None:
    from fastmaml.rl import train as runs

    return runs.train(config, out, overwrite=overwrite, progress=progress)


def resume(run_dir: Path, progress: bool, device: str | None = None) -> dict | None:
    from fastmaml.rl import train as runs

    if device is not None:
        raise ValueError("meta-RL runs sample and train on the CPU; drop device=... from --resume")

    return runs.train(None, run_dir, resume=True, progress=progress)


def evaluate_run(run_dir: Path, tasks: int | None, steps: int | None, out: Path) -> dict:
    from fastmaml.rl.train import evaluate_run as evaluate

    return evaluate(run_dir, tasks, steps, out=out)


def plot_run(run_dir: Path, out: Path | None) -> Path:
    from fastmaml.rl.plot import plot_run as plot

    return plot(run_dir, out)


def summary(results: dict) -> str:
    from fastmaml.rl.evaluate import format_table

    return format_table(results)
