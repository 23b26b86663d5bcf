"""The supervised kind of run (:mod:`fastmaml.kinds`): what the command line calls for its recipes and runs."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fastmaml.train import config as cfg

NAME = "supervised"
TITLE = "supervised"
DISTRIBUTED = True  # trains in several processes (--nproc-per-node)


def resolve(recipe: str, overrides: list[str]) -> cfg.TrainConfig:
    return cfg.resolve(recipe, overrides)


def load_config(run_dir: Path) -> cfg.TrainConfig:
    return cfg.load(run_dir / "config.yaml")


def train(config: cfg.TrainConfig, out: Path, overwrite: bool, progress: bool) -> dict | None:
    from fastmaml.train import run

    return run.train(config, out, overwrite=overwrite, progress=progress)


def resume(run_dir: Path, progress: bool, device: str | None = None) -> dict | None:
    from fastmaml.train import run

    return run.train(None, run_dir, resume=True, progress=progress, device=device)


def evaluate_run(run_dir: Path, tasks: int | None, steps: int | None, out: Path | None = None,
                 mean_episodes: int | None = None, iteration: int | None = None) -> dict:
    from fastmaml.train import run

    if mean_episodes is not None:
        raise ValueError("--mean-episodes scores a meta-RL policy's mean action; drop it for a supervised run")
    return run.evaluate_run(run_dir, tasks, steps, out=out, iteration=iteration)


def plot_run(run_dir: Path, out: Path | None) -> Path:
    from fastmaml.plot import plot_run as plot

    return plot(run_dir, out)


def summary(results: dict) -> str:
    from fastmaml.train.evaluate import format_table

    metric = "accuracy" if all("accuracy" in r for r in results.values()) else "loss"
    return format_table(results, metric)


def load(run_dir: str | Path, which: str | int = "best") -> nn.Module:
    from fastmaml.train import run

    return run.load(run_dir, which)
