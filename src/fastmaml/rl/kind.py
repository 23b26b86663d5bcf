"""The meta-RL kind of run (:mod:`fastmaml.kinds`, ``kind: rl``): what the command line calls for its recipes
and runs."""

from __future__ import annotations

from pathlib import Path

from fastmaml.rl import config as rlcfg

NAME = "rl"
TITLE = "meta-RL"
DISTRIBUTED = False  # one process: the sampler steps every environment on MuJoCo's own threads


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


def evaluate_run(run_dir: Path, tasks: int | None, steps: int | None, out: Path,
                 mean_episodes: int | None = None, iteration: int | None = None) -> dict:
    from fastmaml.rl.train import evaluate_run as evaluate

    return evaluate(run_dir, tasks, steps, out=out, mean_episodes=mean_episodes, iteration=iteration)


def plot_run(run_dir: Path, out: Path | None) -> Path:
    from fastmaml.rl.plot import plot_run as plot

    return plot(run_dir, out)


def summary(results: dict) -> str:
    from fastmaml.rl.evaluate import format_table

    return format_table(results)


def load(run_dir: str | Path, which: str | int = "last"):
    from fastmaml.rl import train as runs

    return runs.load(run_dir, which)
