"""The ``fastmaml`` command: argument parsing only; the work is in :mod:`fastmaml.train`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import textwrap
from pathlib import Path

from fastmaml.errors import OutOfMemory

# Errors a user can fix from the message alone: shown as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
               FloatingPointError, pickle.UnpicklingError, KeyError, OutOfMemory)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmaml", description="Fast, exact MAML-family meta-learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="meta-train a recipe (see `fastmaml recipes`)")
    train.add_argument("recipe", nargs="?", help="recipe name or path to a YAML file")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. inner_lr=0.1")
    train.add_argument("--out", type=Path, help="run folder (default: runs/RECIPE)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--nproc-per-node", type=int, metavar="N",
                       help="split each meta-batch over N processes on this machine (torch.distributed)")

    evaluate = commands.add_parser("eval", help="meta-test a finished run on fresh tasks")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--tasks", type=int, help="number of test tasks (default: the run's eval_tasks)")
    evaluate.add_argument("--steps", type=int, help="inner steps at test (default: the run's eval_inner_steps)")
    evaluate.add_argument("--mean-episodes", type=int, metavar="N",
                          help="meta-RL: also score N episodes of each policy's mean action per task and step "
                               "(Meta-World's protocol: 3; default: the run's eval_mean_episodes)")
    evaluate.add_argument("--iteration", type=int, metavar="N",
                          help="meta-test the checkpoint the run kept at iteration N (trained with keep_every) "
                               "instead of its best or last")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.add_argument("--out", type=Path, metavar="FILE",
                          help="write the results to FILE (default: RUN_DIR/eval.json when the run has none, "
                               "else RUN_DIR/eval-<tasks>tasks-<steps>steps.json; with --iteration N "
                               "RUN_DIR/eval-iterationN-<tasks>tasks-<steps>steps.json)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace an existing results file (without --out: the run's eval.json)")

    plot = commands.add_parser("plot", help="draw a run's adaptation panel and learning curve (PNG)")
    plot.add_argument("run_dir", type=Path)
    plot.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/plot.png)")

    commands.add_parser("recipes", help="list the built-in recipes")
    return parser


def format_recipes(recipes: dict[str, str], width: int | None) -> str:
    """One row per recipe: its name, padded to the longest name, then its whole description, wrapped to
    ``width`` columns under its own column (one line per recipe when ``width`` is None, e.g. into a pipe)."""
    column = max(map(len, recipes)) + 2
    rows = []
    for name, summary in recipes.items():
        if width is None:
            rows.append(f"{name:<{column}}{summary}".rstrip())
            continue
        lines = textwrap.wrap(summary, max(width - column, 30), break_on_hyphens=False) or [""]
        rows.append(f"{name:<{column}}{lines[0]}".rstrip())
        rows.extend(" " * column + line for line in lines[1:])
    return "\n".join(rows)


def _require_cli_extra() -> None:
    try:
        import tqdm  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        raise ImportError("fastmaml's command line needs PyYAML and tqdm: pip install 'fastmaml[cli]' "
                          "(in a checkout: pip install -e '.[cli]')") from None


def _launch(args: argparse.Namespace) -> int:
    """``train --nproc-per-node N``: check what can be checked here (one line, before any process
    starts), then run the same command without the flag in N processes."""
    from fastmaml.train import config as cfg
    from fastmaml.train import distributed
    from fastmaml.train import run as runs

    if args.resume is not None:
        runs.check_run_dir(args.resume, overwrite=False, resume=True)
        config = cfg.load(args.resume / runs.CONFIG)
        device = _resume_device(args)
        argv = ["train", "--resume", str(args.resume), *([f"device={device}"] if device else [])]
    else:
        if args.recipe is None:
            raise ValueError("name a recipe to train, e.g. `fastmaml train sinusoid` (list them: fastmaml recipes)")
        config = cfg.resolve(args.recipe, args.overrides)
        out = args.out or Path("runs") / Path(args.recipe).stem
        runs.check_run_dir(out, args.overwrite, resume=False)
        argv = ["train", args.recipe, *args.overrides, "--out", str(out), *(["--overwrite"] if args.overwrite else [])]
    distributed.Context(0, max(args.nproc_per_node, 1)).check_meta_batch(config.meta_batch_size)
    return distributed.launch([*argv, *(["--no-progress"] if args.no_progress else [])], args.nproc_per_node)


def _resume_device(args: argparse.Namespace) -> str | None:
    """The one setting ``--resume`` may change: ``device=...`` (a run trained on a GPU continues on the CPU, or
    the other way round; checkpoints load on any device)."""
    given = [t for t in (args.recipe, *args.overrides) if t is not None]
    if any(not t.startswith("device=") for t in given) or len(given) > 1:
        raise ValueError("--resume continues a run with its saved config; drop the recipe and overrides "
                         "(only device=... may change)")
    return given[0].removeprefix("device=") if given else None


def _saved_config(kind, run_dir: Path):
    """The config saved in ``run_dir``, or None when it cannot be read (the command itself then says why)."""
    try:
        return kind.load_config(run_dir)
    except USER_ERRORS:
        return None


def _train(args: argparse.Namespace, kind) -> int:
    from fastmaml.threads import use_free_cores

    progress = not args.no_progress
    if args.resume is not None:
        device = _resume_device(args)
        config = _saved_config(kind, args.resume)
        with use_free_cores(config.threads if config is not None else None):
            results = kind.resume(args.resume, progress, device)
    else:
        if args.recipe is None:
            raise ValueError("name a recipe to train, e.g. `fastmaml train sinusoid` (list them: fastmaml recipes)")
        if "=" in args.recipe:
            raise ValueError(f"{args.recipe!r} looks like an override; put the recipe name first")
        out = args.out or Path("runs") / Path(args.recipe).stem
        config = kind.resolve(args.recipe, args.overrides)
        with use_free_cores(config.threads):
            results = kind.train(config, out, args.overwrite, progress)
        if os.environ.get("RANK", "0") == "0":
            print(f"run folder: {out}")
    if results:
        print(kind.summary(results))
    return 0


def eval_path(run_dir: Path, config, tasks: int | None, steps: int | None, out: Path | None, overwrite: bool,
              iteration: int | None = None) -> Path:
    """Where ``fastmaml eval`` writes its results: ``out`` when given; the run's ``eval.json`` when the run has
    none yet or ``overwrite`` is set; else ``eval-<tasks>tasks-<steps>steps.json`` beside it, so the
    evaluation that ``fastmaml train`` wrote is never replaced unasked. A kept checkpoint's (``iteration``)
    is ``eval-iteration<N>-<tasks>tasks-<steps>steps.json``."""
    if out is not None:
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; name a file, e.g. --out {out / 'eval.json'}")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: no folder {out.parent}; create it or choose another --out")
        if out.exists() and not overwrite:
            raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")
        return out
    default = run_dir / "eval.json"
    if config is None or (iteration is None and (overwrite or not default.exists())):
        return default  # (no config: the evaluation stops, before writing anything, on the reason)
    from fastmaml.train.folder import eval_name

    tasks = config.eval_tasks if tasks is None else tasks
    steps = config.eval_inner_steps if steps is None else steps
    return run_dir / eval_name(tasks, steps, iteration)


def _evaluate(args: argparse.Namespace, kind) -> int:
    from fastmaml.threads import use_free_cores

    if args.iteration is not None and args.iteration < 0:
        raise ValueError(f"--iteration {args.iteration}; name an iteration the run kept a checkpoint at (>= 0)")
    config = _saved_config(kind, args.run_dir)
    out = eval_path(args.run_dir, config, args.tasks, args.steps, args.out, args.overwrite, args.iteration)
    replacing = out.exists()
    with use_free_cores(config.threads if config is not None else None):
        results = kind.evaluate_run(args.run_dir, args.tasks, args.steps, out, args.mean_episodes, args.iteration)
    print(json.dumps(results, indent=1) if args.json else kind.summary(results))
    kept = args.out is None and out.name != "eval.json" and (args.run_dir / "eval.json").is_file()
    note = " (replacing the earlier file)" if replacing else " (the run's eval.json is kept)" if kept else ""
    print(f"results written to {out}{note}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _require_cli_extra()
    from fastmaml.train import config as cfg

    from fastmaml import kinds

    if args.command == "recipes":
        width = shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None
        print(format_recipes({name: cfg.recipe_summary(name) for name in cfg.recipe_names()}, width))
        return 0
    kind = _kind(kinds, args)
    if args.command == "train" and args.nproc_per_node is not None and args.nproc_per_node != 1:
        if not kind.DISTRIBUTED:
            raise ValueError(f"{kind.TITLE} recipes train in one process; drop --nproc-per-node and give both cores "
                             "to it with threads=2")
        return _launch(args)
    if args.command == "train":
        return _train(args, kind)
    if args.command == "eval":
        return _evaluate(args, kind)
    if args.command == "plot":
        print(kind.plot_run(args.run_dir, args.out))
        return 0
    raise AssertionError(args.command)


def _kind(kinds, args: argparse.Namespace):
    """The kind of run (:mod:`fastmaml.kinds`) the command concerns: the recipe's, or the run folder's."""
    if args.command == "train":
        return kinds.of_run(args.resume) if args.resume is not None else kinds.of_recipe(args.recipe)
    return kinds.of_run(args.run_dir)


def _report(line: str) -> None:
    """The closing line on stderr; a process started by ``--nproc-per-node`` hands it to the launcher."""
    if os.environ.get("FASTMAML_REPORT_DIR"):  # distributed.REPORT_DIR, read before torch is imported
        from fastmaml.train.distributed import report

        report(line)
    else:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader went away (`fastmaml recipes | head -1`): stop quietly, as the shell's tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)  # 141, as a shell reports it (no SIGPIPE on Windows)
    except KeyboardInterrupt as error:
        # Interrupted (a KeyboardInterrupt) carries "interrupted at iteration N; resume with ..."
        signum = getattr(error, "signum", signal.SIGINT)
        if os.environ.get("RANK", "0") == "0":  # one message per distributed job
            _report(f"fastmaml: {error.args[0] if error.args else 'interrupted'}")
        return 128 + signum
    except (*USER_ERRORS, ImportError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        rank = os.environ.get("RANK", "0")
        prog = "fastmaml" if rank == "0" else f"fastmaml[rank {rank}]"
        _report(f"{prog}: error: {message.splitlines()[0] if message else type(error).__name__}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
