"""A run folder, for every kind of run: its files, creating it, reopening it to resume, restoring from it.

Nothing here writes before it has checked: a folder that must not be used is refused as it is, and a
checkpoint that does not fit the run's objects is a one-line error that leaves every file in place.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fastmaml.train import config as cfg
from fastmaml.train.checkpoint import copy_atomic, load_checkpoint, write_text_atomic

CONFIG, METRICS, LAST, BEST, BASELINES, EVAL, TENSORBOARD = (
    "config.yaml", "metrics.jsonl", "checkpoint.pt", "best.pt", "baselines.pt", "eval.json", "tensorboard")
# meta-RL's pretrained baseline while it trains: its checkpoint (removed once baselines.pt is written) and metrics
BASELINE_LAST, BASELINE_METRICS = "baseline-checkpoint.pt", "baseline-metrics.jsonl"
SNAPSHOTS = "snapshots"  # the checkpoints kept every ``keep_every`` iterations: snapshots/checkpoint-<iteration>.pt
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, without writing anything, a folder that ``train`` must not use."""
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise FileNotFoundError(f"{run_dir} is not a fastmaml run folder (no {CONFIG}); "
                                    "check the path given to --resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file; choose a folder path for --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                                  "replace it, or --out for a new folder")
        if not (run_dir / CONFIG).is_file():
            raise FileExistsError(f"{run_dir} is not empty and not a fastmaml run; choose another --out folder")


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Create ``run_dir``, refusing to touch an existing run unless asked to resume or overwrite."""
    check_run_dir(run_dir, overwrite, resume)
    if resume:
        return
    if overwrite and run_dir.is_dir() and (run_dir / CONFIG).is_file():
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write to {run_dir} ({error.strerror}); choose a writable --out folder") from None


def read(run_dir: Path, load_config) -> tuple[Any, dict | None]:
    """The saved config (``load_config(path)``) and the last checkpoint of a run folder, read only (a run
    killed before its first checkpoint has none, and restarts from iteration 0)."""
    check_run_dir(run_dir, overwrite=False, resume=True)
    config = load_config(run_dir / CONFIG)
    return config, load_checkpoint(run_dir / LAST) if (run_dir / LAST).is_file() else None


def write_config(config: Any, run_dir: Path) -> None:
    """The resolved config, as ``config.yaml``: a run can be reproduced and resumed from its folder alone."""
    import yaml

    write_text_atomic(yaml.safe_dump(cfg.to_dict(config), sort_keys=False), run_dir / CONFIG)


def create(config: Any, run_dir: Path, overwrite: bool) -> None:
    """A new run folder holding ``config``."""
    prepare_run_dir(run_dir, overwrite, resume=False)
    write_config(config, run_dir)


def reopen(run_dir: Path, history: list[dict], metrics: str = METRICS) -> None:
    """A folder to continue: ``metrics`` may run past the checkpoint (or end in half a line after a kill),
    so it is rewritten from the checkpoint's history, exactly what was logged up to its iteration; half-written
    files of a killed atomic save are removed."""
    write_text_atomic("".join(json.dumps(r) + "\n" for r in history), run_dir / metrics)
    for leftover in [*run_dir.glob(".*.tmp"), *(run_dir / SNAPSHOTS).glob(".*.tmp")]:
        leftover.unlink()


def keep_missing_snapshot(run_dir: Path, iteration: int, keep_every: int) -> None:
    """A run stopped between writing a kept iteration's checkpoint and copying it resumes from that very
    checkpoint: copy it now, so that a resumed run keeps the same snapshots as one never stopped."""
    kept = Path(run_dir) / SNAPSHOTS / f"checkpoint-{iteration}.pt"
    if keep_every and iteration and iteration % keep_every == 0 and not kept.is_file():
        keep_snapshot(Path(run_dir) / LAST, iteration)


def eval_name(tasks: int, steps: int, iteration: int | None = None) -> str:
    """The name of a meta-test's results beside the run's own ``eval.json``:
    ``eval-<tasks>tasks-<steps>steps.json``, or for a kept checkpoint ``eval-iteration<N>-...``."""
    return f"eval-{'' if iteration is None else f'iteration{iteration}-'}{tasks}tasks-{steps}steps.json"


def results_path(run_dir: Path, out: str | Path | None, tasks: int, steps: int, iteration: int | None) -> Path:
    """Where a meta-test writes its results: ``out``; else the run's ``eval.json``, or for a kept checkpoint
    (``iteration``) :func:`eval_name`'s file, leaving the run's own results alone."""
    if out is not None:
        return Path(out)
    return Path(run_dir) / (EVAL if iteration is None else eval_name(tasks, steps, iteration))


def keep_snapshot(checkpoint: Path, iteration: int) -> Path:
    """A copy of ``checkpoint`` (just written at ``iteration``) kept beside it as
    ``snapshots/<name>-<iteration>.pt``, which later checkpoints do not overwrite."""
    checkpoint = Path(checkpoint)
    kept = checkpoint.parent / SNAPSHOTS / f"{checkpoint.stem}-{iteration}{checkpoint.suffix}"
    kept.parent.mkdir(exist_ok=True)
    copy_atomic(checkpoint, kept)
    return kept


def kept_iterations(run_dir: Path) -> list[int]:
    """The iterations whose checkpoint the run kept (``keep_every``), in order."""
    names = (p.stem.removeprefix("checkpoint-") for p in (Path(run_dir) / SNAPSHOTS).glob("checkpoint-*.pt"))
    return sorted(int(n) for n in names if n.isdigit())


def checkpoint_path(run_dir: Path, which: str | int) -> Path:
    """The run's checkpoint ``which``: ``"last"`` (or ``"best"``, which a kind with meta-validation resolves
    further) is ``checkpoint.pt``; an iteration is the checkpoint kept then, and a one-line error lists the
    kept ones when there is none."""
    if which in ("best", "last"):
        return Path(run_dir) / LAST
    if isinstance(which, bool) or not isinstance(which, int) or which < 0:
        raise ValueError(f"which={which!r}; use 'best', 'last' or an iteration the run kept a checkpoint at")
    path = Path(run_dir) / SNAPSHOTS / f"checkpoint-{which}.pt"
    if not path.is_file():
        kept = kept_iterations(run_dir)
        fix = f"name one it kept: {', '.join(map(str, kept))}" if kept else \
            "it kept none: train with keep_every=N to keep the checkpoint every N iterations"
        raise FileNotFoundError(f"{run_dir} has no checkpoint kept at iteration {which}; {fix}")
    return path


def append_metrics(path: Path, lines: list[dict]) -> None:
    """``lines`` appended to ``path`` (a run's metrics.jsonl), one JSON object a line."""
    with Path(path).open("a") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


@contextlib.contextmanager
def restoring(where: str) -> Iterator[None]:
    """Loading a checkpoint into freshly built objects: a mismatch is one line naming the fix."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{where} does not match the run's config.yaml ({first}); restore the files the run "
                         "wrote or start again with --overwrite") from None
