"""A run folder: resolved config, metrics, checkpoints, baselines and evaluation, from the CLI or Python."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from fastmaml.train import config as cfg
from fastmaml.train.baselines import pretrain, tune_step_size
from fastmaml.train.build import (
    build_algorithm,
    build_model,
    build_optimizer,
    build_tasks,
    model_args,
    task_generator,
)
from fastmaml.train.checkpoint import load_checkpoint, save_atomic
from fastmaml.train.evaluate import evaluate
from fastmaml.train.loop import LoopState, make_step, meta_train, restore_run_checkpoint, save_run_checkpoint

log = logging.getLogger(__name__)
CONFIG, METRICS, LAST, BEST, BASELINES, EVAL = (
    "config.yaml", "metrics.jsonl", "checkpoint.pt", "best.pt", "baselines.pt", "eval.json")


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Create ``run_dir``, refusing to touch an existing run unless asked to resume or overwrite."""
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise FileNotFoundError(f"{run_dir} is not a fastmaml run folder (no {CONFIG}); check the path given to --resume")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                                  "replace it, or --out for a new folder")
        if not (run_dir / CONFIG).is_file():
            raise FileExistsError(f"{run_dir} is not empty and not a fastmaml run; choose another --out folder")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write to {run_dir} ({error.strerror}); choose a writable --out folder") from None


def train(config: cfg.TrainConfig | None, run_dir: Path, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, evaluate_at_end: bool = True) -> dict | None:
    """Meta-train per ``config`` into ``run_dir`` (or continue the run there); returns the final evaluation."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, overwrite, resume)
    if resume:
        config = cfg.load(run_dir / CONFIG)
    else:
        assert config is not None
        cfg.save(config, run_dir / CONFIG)
    if config.threads:
        torch.set_num_threads(config.threads)

    tasks = build_tasks(config, "train")
    val_tasks = build_tasks(config, "val") if config.val_every else None
    args = model_args(config, tasks)
    algorithm = build_algorithm(config, build_model(config, args)).to(config.device)
    optimizer = build_optimizer(config, algorithm.parameters())
    scheduler = algorithm.scheduler(optimizer, config.iterations) if hasattr(algorithm, "scheduler") else None
    generators = {"train": task_generator(config, "train")}
    state = LoopState()
    if resume and (run_dir / LAST).is_file():
        state = restore_run_checkpoint(load_checkpoint(run_dir / LAST), algorithm, optimizer, generators, scheduler)

    def on_log(state: LoopState) -> None:
        it = state.iteration
        if val_tasks is not None and it % config.val_every < config.log_every:
            result = evaluate(algorithm, val_tasks, config.val_tasks, config.eval_inner_steps,
                              task_generator(config, "val"))
            score = _score(result)
            state.history[-1]["val"] = score
            if state.best is None or score > state.best:
                state.best = score
                save_atomic({"algorithm": algorithm.state_dict(), "model_args": args, "iteration": it,
                             "val": score}, run_dir / BEST)
        if config.checkpoint_every and it % config.checkpoint_every < config.log_every:
            save_run_checkpoint(run_dir / LAST, algorithm, optimizer, state, generators, scheduler)

    meta_train(
        algorithm, optimizer, tasks, generators["train"], iterations=config.iterations,
        meta_batch_size=config.meta_batch_size, step=make_step(algorithm, config.compile), scheduler=scheduler,
        state=state, log_every=config.log_every, metrics_path=run_dir / METRICS, on_log=on_log, progress=progress,
        max_minutes=config.max_minutes,
    )
    save_run_checkpoint(run_dir / LAST, algorithm, optimizer, state, generators, scheduler)
    save_atomic({"model_args": args}, run_dir / "model_args.pt")
    if config.data.name == "sinusoid" and config.baseline_iterations:
        train_baselines(config, run_dir, tasks, build_model(config, args))
    return evaluate_run(run_dir) if evaluate_at_end else None


def _score(result: dict) -> float:
    """Higher is better: accuracy after the last step, else minus the loss."""
    if "accuracy" in result:
        return result["accuracy"][-1]["mean"]
    return -result["loss"][-1]["mean"]


def train_baselines(config: cfg.TrainConfig, run_dir: Path, tasks, fresh: nn.Module) -> None:
    """The paper's pretrained and from-scratch regression baselines, with tuned fine-tuning step sizes."""
    generator = torch.Generator().manual_seed(config.seed + 7)
    pretrained = pretrain(fresh, tasks, generator, config.baseline_iterations, config.meta_batch_size)
    val = build_tasks(config, "val")
    steps = config.eval_inner_steps
    save_atomic({
        "pretrained": pretrained.state_dict(),
        "pretrained_lr": tune_step_size(pretrained, val, task_generator(config, "val"), steps),
        "scratch": fresh.state_dict(),
        "scratch_lr": tune_step_size(fresh, val, task_generator(config, "val"), steps),
    }, run_dir / BASELINES)


def load(run_dir: str | Path, which: str = "best") -> nn.Module:
    """The trained algorithm (e.g. ``MAML``) of a run folder, ready to ``adapt`` and ``predict``.

    ``which="best"`` takes the best meta-validation checkpoint when the run kept one, else the last.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a fastmaml run folder (no {CONFIG}); pass the folder `fastmaml train` wrote")
    if which not in ("best", "last"):
        raise ValueError(f"which={which!r}; use 'best' or 'last'")
    config = cfg.load(run_dir / CONFIG)
    path = run_dir / BEST if which == "best" and (run_dir / BEST).is_file() else run_dir / LAST
    checkpoint = load_checkpoint(path)
    args = load_checkpoint(run_dir / "model_args.pt")["model_args"] if "model_args" not in checkpoint \
        else checkpoint["model_args"]
    algorithm = build_algorithm(config, build_model(config, args))
    algorithm.load_state_dict(checkpoint["algorithm"])
    return algorithm


def baselines(run_dir: Path) -> dict[str, nn.Module]:
    """The regression baselines of a sinusoid run, as MAML objects with their tuned step sizes."""
    from fastmaml.algorithms.maml import MAML

    config = cfg.load(run_dir / CONFIG)
    saved = load_checkpoint(run_dir / BASELINES)
    out = {}
    for name in ("pretrained", "scratch"):
        model = build_model(config, {})
        model.load_state_dict(saved[name])
        out[name] = MAML(model, inner_lr=saved[f"{name}_lr"])
    return out


def evaluate_run(run_dir: str | Path, num_tasks: int | None = None, inner_steps: int | None = None) -> dict:
    """Meta-test the run (and its baselines) on fresh test tasks; writes ``eval.json``."""
    run_dir = Path(run_dir)
    config = cfg.load(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    algorithm = load(run_dir)
    assert config is not None
    num_tasks = num_tasks or config.eval_tasks
    steps = config.eval_inner_steps if inner_steps is None else inner_steps
    tasks = build_tasks(config, "test")
    methods = {config.algorithm: algorithm}
    if (run_dir / BASELINES).is_file():
        methods.update(baselines(run_dir))
    results = {name: evaluate(m, tasks, num_tasks, steps, task_generator(config, "test"))
               for name, m in methods.items()}
    (run_dir / EVAL).write_text(json.dumps(results, indent=1))
    return results
