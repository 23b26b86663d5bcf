"""The ``fastmaml`` command for meta-RL recipes and runs (``kind: rl``); :mod:`fastmaml.cli` routes here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmaml.rl import config as rlcfg


def handles(args: argparse.Namespace) -> bool:
    """Whether the parsed command concerns a meta-RL recipe or run folder."""
    if args.command == "train":
        return rlcfg.is_rl_run(args.resume) if args.resume is not None else rlcfg.is_rl_recipe(args.recipe)
    if args.command in ("eval", "plot"):
        return rlcfg.is_rl_run(args.run_dir)
    return False


def run(args: argparse.Namespace) -> int:
    from fastmaml.rl import train as runs
    from fastmaml.rl.evaluate import format_table

    if args.command == "train":
        if args.resume is not None:
            if args.recipe or args.overrides:
                raise ValueError("--resume continues a run with its saved config; drop the recipe and overrides")
            results = runs.train(None, args.resume, resume=True, progress=not args.no_progress)
        else:
            if "=" in args.recipe:
                raise ValueError(f"{args.recipe!r} looks like an override; put the recipe name first")
            config = rlcfg.resolve(args.recipe, args.overrides)
            out = args.out or Path("runs") / Path(args.recipe).stem
            results = runs.train(config, out, overwrite=args.overwrite, progress=not args.no_progress)
            print(f"run folder: {out}")
        if results is not None:
            print(format_table(results))
        return 0
    if args.command == "eval":
        results = runs.evaluate_run(args.run_dir, args.tasks, args.steps)
        print(json.dumps(results, indent=1) if args.json else format_table(results))
        return 0
    if args.command == "plot":
        from fastmaml.rl.plot import plot_run

        print(plot_run(args.run_dir, args.out))
        return 0
    raise AssertionError(args.command)
