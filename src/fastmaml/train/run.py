"""A supervised run: resolved config, metrics, checkpoints, baselines and evaluation, from the CLI or Python.

The folder's files are :mod:`fastmaml.train.folder`'s, the loop :func:`fastmaml.train.loop.run_loop`, the
steps :class:`fastmaml.train.outer.OuterSteps`; this module builds a run's objects and plugs them in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastmaml.train import config as cfg
from fastmaml.train import distributed, folder, placement
from fastmaml.train.baselines import pretrain, tune_step_size
from fastmaml.train.build import (
    build_algorithm,
    build_model,
    build_optimizer,
    build_scheduler,
    build_tasks,
    model_args,
    task_generator,
)
from fastmaml.train.checkpoint import load_checkpoint, save_atomic, write_text_atomic
from fastmaml.train.evaluate import evaluate
from fastmaml.train.folder import (
    BASELINES, BEST, CONFIG, DTYPES, EVAL, LAST, METRICS, TENSORBOARD, check_run_dir, checkpoint_path,
    prepare_run_dir)
from fastmaml.train.loop import Interrupted, LoopState, StopRequest
from fastmaml.train.outer import make_step, meta_train, restore_run_checkpoint, save_run_checkpoint

log = logging.getLogger(__name__)
__all__ = ["BASELINES", "BEST", "CONFIG", "EVAL", "LAST", "METRICS", "TENSORBOARD", "check_run_dir",
           "evaluate_run", "load", "prepare_run_dir", "train"]


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or an error naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard=true needs the tensorboard package: pip install 'fastmaml[tensorboard]' "
                          "(in a checkout: pip install -e '.[tensorboard]')") from None
    return SummaryWriter


def _device(name: str, dist: distributed.Context) -> tuple[torch.device, str]:
    """This rank's device for the ``device`` option, and the name the run's config.yaml records: ``auto``
    resolved to ``cuda`` or ``cpu`` (no index, so a resumed or distributed run picks its rank's GPU)."""
    device = dist.device(name)
    return device, device.type if name == "auto" else name


def _log_device(name: str, device: torch.device) -> None:
    detail = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    log.info("device=%s: training on %s%s", name, device, detail)


def train(config: cfg.TrainConfig | None, run_dir: Path, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, evaluate_at_end: bool = True, device: str | None = None) -> dict | None:
    """Meta-train per ``config`` into ``run_dir`` (or continue the run there); returns the final evaluation.

    Launched by torchrun with several processes, the meta-batch is split across them (see
    :mod:`fastmaml.train.distributed`); only rank 0 writes files and returns the evaluation.
    SIGINT/SIGTERM save a checkpoint and raise :class:`~fastmaml.train.loop.Interrupted`.
    ``device``: with ``resume``, continue on this device instead of the saved one (a checkpoint loads on any
    device); the run's config.yaml then records it.

    Example:
        >>> config = fm.TrainConfig(iterations=2, meta_batch_size=2, eval_tasks=4, baseline_iterations=0)
        >>> results = train(config, "runs/sinusoid", progress=False)  # a tiny run (the recipe's is 70,000 iterations)
        >>> results["maml"]["tasks"], len(results["maml"]["loss"])  # before and after each of 10 inner steps
        (4, 11)
    """
    run_dir = Path(run_dir)
    dist = distributed.from_env()
    try:
        return _train(config, run_dir, dist, overwrite, resume, progress, evaluate_at_end, device)
    finally:
        dist.close()


def _train(config: cfg.TrainConfig | None, run_dir: Path, dist: distributed.Context, overwrite: bool, resume: bool,
           progress: bool, evaluate_at_end: bool, device_override: str | None) -> dict | None:
    # Nothing is written until everything is built and the checkpoint restored: a bad config, a
    # corrupt checkpoint or missing data leaves the folder exactly as it was.
    config, checkpoint = _settle_config(config, run_dir, dist, overwrite, resume, device_override)
    writer_class = summary_writer_class() if config.tensorboard and dist.is_main else None
    device, recorded = _settle_device(config, run_dir, dist, resume)
    run = _Objects(config, device)
    if dist.is_main:
        _log_device(config.device, device)
    config = dataclasses.replace(config, device=recorded)
    state = LoopState()
    if checkpoint is not None:
        state = restore_run_checkpoint(checkpoint, run.algorithm, run.optimizer, run.generators, run.scheduler,
                                       str(run_dir / LAST))
    main = dist.is_main
    if not resume:
        dist.run_on_main(lambda: folder.create(config, run_dir, overwrite))
    elif main:
        if device_override is not None:  # the next --resume continues where this one runs
            folder.write_config(config, run_dir)
        folder.reopen(run_dir, state.history)
        folder.keep_missing_snapshot(run_dir, state.iteration, config.keep_every)
    # Events past the checkpoint's iteration (logged before a kill) are purged, as metrics.jsonl's lines are.
    writer = writer_class(str(run_dir / TENSORBOARD), purge_step=state.iteration + 1 if resume else None) \
        if writer_class is not None else None

    def save(state: LoopState) -> Path:
        save_run_checkpoint(run_dir / LAST, run.algorithm, run.optimizer, state, run.generators, run.scheduler,
                            {"model_args": run.args})
        return run_dir / LAST

    stop = StopRequest()
    try:
        with stop.installed():
            meta_train(
                run.algorithm, run.optimizer, run.tasks, run.generators["train"], iterations=config.iterations,
                meta_batch_size=config.meta_batch_size, step=make_step(run.algorithm), scheduler=run.scheduler,
                state=state, log_every=config.log_every, metrics_path=run_dir / METRICS if main else None,
                writer=writer, on_log=_Validation(config, run, run_dir) if main else None,
                checkpoint=save if main else None, checkpoint_every=config.checkpoint_every,
                keep_every=config.keep_every, stop=stop, dist=dist, progress=progress and main,
                max_minutes=config.max_minutes,
            )
    except (Interrupted, FloatingPointError):
        dist.close(barrier=True)  # every rank stops at the same iteration (the decision is all-reduced)
        raise
    finally:
        if writer is not None:
            writer.close()
        if isinstance(run.tasks, placement.Prefetcher):
            run.tasks.close()
    dist.close(barrier=True)  # the rest is rank 0's alone
    if not main:
        return None
    save(state)
    if config.data.name == "sinusoid" and config.baseline_iterations:
        train_baselines(config, run_dir, run.tasks, build_model(config, run.args))
    return evaluate_run(run_dir) if evaluate_at_end else None


def _settle_config(config: cfg.TrainConfig | None, run_dir: Path, dist: distributed.Context, overwrite: bool,
                   resume: bool, device_override: str | None) -> tuple[cfg.TrainConfig, dict | None]:
    """The run's config (given, or the saved one with any device override) and its checkpoint, if any."""
    if resume:
        config, checkpoint = dist.run_on_main(lambda: folder.read(run_dir, cfg.load))
        if device_override is not None:  # the checkpoint loads on any device (read to the CPU, then moved)
            config = dataclasses.replace(config, device=device_override)
        return config, checkpoint
    if config is None:
        raise ValueError("train() needs a config unless resume=True")
    dist.run_on_main(lambda: check_run_dir(run_dir, overwrite, resume=False))
    return config, None


def _settle_device(config: cfg.TrainConfig, run_dir: Path, dist: distributed.Context, resume: bool
                   ) -> tuple[torch.device, str]:
    """The run's device (and its recorded name), threads and global seeds."""
    dist.check_meta_batch(config.meta_batch_size)
    try:
        device, recorded = _device(config.device, dist)
    except ValueError as error:
        if not resume:
            raise
        raise ValueError(f"{error} (fastmaml train --resume {run_dir} device=cpu)") from None
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    return device, recorded


class _Objects:
    """What a run trains: its task streams (placed for the device), model, algorithm, optimizer, schedule."""

    def __init__(self, config: cfg.TrainConfig, device: torch.device) -> None:
        self.tasks = placement.place(build_tasks(config, "train"), device, "meta-train tasks")
        self.val_tasks = placement.place(build_tasks(config, "val"), device, "meta-val tasks", prefetch=False) \
            if config.val_every else None
        self.args = model_args(config, self.tasks)
        model = build_model(config, self.args)
        self.algorithm = build_algorithm(config, model).to(device=device, dtype=DTYPES[config.dtype])
        self.optimizer = build_optimizer(config, self.algorithm.parameters())
        self.scheduler = build_scheduler(config, self.algorithm, self.optimizer)
        self.generators = {"train": task_generator(config, "train")}


class _Validation:
    """Meta-validation at log lines every ``val_every`` iterations (and always at the last: after a whole
    cosine schedule the last model is often the best), keeping the best model in ``best.pt``."""

    def __init__(self, config: cfg.TrainConfig, run: _Objects, run_dir: Path) -> None:
        self.config, self.run, self.run_dir = config, run, run_dir

    def __call__(self, state: LoopState, last: bool) -> None:
        config, run = self.config, self.run
        if run.val_tasks is None or not (state.iteration % config.val_every < config.log_every or last):
            return
        result = evaluate(run.algorithm, run.val_tasks, config.val_tasks, config.eval_inner_steps,
                          task_generator(config, "val"))
        score = _score(result)
        state.history[-1]["val"] = score
        if state.best is None or score > state.best:
            state.best = score
            save_atomic({"algorithm": run.algorithm.state_dict(), "model_args": run.args,
                         "iteration": state.iteration, "val": score}, self.run_dir / BEST)


def eval_device(name: str) -> torch.device:
    """Where a run's meta-test runs: the device it trained on when this machine has it, else the CPU
    (evaluating a GPU run on a laptop works, more slowly)."""
    try:
        return distributed.Context().device(name)
    except ValueError:
        return torch.device("cpu")


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


def load(run_dir: str | Path, which: str | int = "best") -> nn.Module:
    """The trained algorithm (e.g. ``MAML``) of a supervised run folder, ready to ``adapt`` and ``predict``
    (``fm.load``, :func:`fastmaml.kinds.load`, takes a run of any kind).

    ``which="best"`` takes the best meta-validation checkpoint when the run kept one, else the last; an
    iteration takes the checkpoint kept then (``keep_every``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a fastmaml run folder (no {CONFIG}); pass the folder `fastmaml train` wrote")
    config = cfg.load(run_dir / CONFIG)
    path = checkpoint_path(run_dir, which)
    if which == "best" and (run_dir / BEST).is_file():
        path = run_dir / BEST
    checkpoint = load_checkpoint(path)
    if "model_args" not in checkpoint:
        raise ValueError(f"{path} holds no model shape (model_args); it was not written by `fastmaml train`")
    algorithm = build_algorithm(config, build_model(config, checkpoint["model_args"])).to(DTYPES[config.dtype])
    algorithm.load_state_dict(checkpoint["algorithm"])
    return algorithm


def baselines(run_dir: Path) -> dict[str, nn.Module]:
    """The regression baselines of a sinusoid run, as MAML objects with their tuned step sizes."""
    from fastmaml.algorithms.maml import MAML

    config = cfg.load(run_dir / CONFIG)
    saved = load_checkpoint(run_dir / BASELINES)
    out: dict[str, nn.Module] = {}
    for name in ("pretrained", "scratch"):
        model = build_model(config, {})
        model.load_state_dict(saved[name])
        out[name] = MAML(model, inner_lr=saved[f"{name}_lr"])
    return out


def evaluate_run(run_dir: str | Path, num_tasks: int | None = None, inner_steps: int | None = None,
                 out: str | Path | None = None, iteration: int | None = None) -> dict:
    """Meta-test the run (and its baselines) on fresh test tasks; writes ``eval.json`` (or ``out``).
    ``iteration``: meta-test the checkpoint the run kept then (``keep_every``) instead of its best or last.

    Example:
        >>> config = fm.TrainConfig(iterations=2, meta_batch_size=2, eval_tasks=4, baseline_iterations=0)
        >>> _ = train(config, "runs/sinusoid", progress=False, evaluate_at_end=False)
        >>> results = evaluate_run("runs/sinusoid", num_tasks=8, inner_steps=1, out="runs/eval-1-step.json")
        >>> results["maml"]["tasks"], len(results["maml"]["loss"])
        (8, 2)
    """
    run_dir = Path(run_dir)
    algorithm = load(run_dir, "best" if iteration is None else iteration)  # raises for a folder that is not a run
    config = cfg.load(run_dir / CONFIG)
    device = eval_device(config.device)
    algorithm = algorithm.to(device)
    if num_tasks is not None and num_tasks < 1:
        raise ValueError(f"tasks={num_tasks}; evaluate on at least 1 task (the protocol uses 600)")
    num_tasks = num_tasks or config.eval_tasks
    steps = config.eval_inner_steps if inner_steps is None else inner_steps
    tasks = placement.place(build_tasks(config, "test"), device, "meta-test tasks", prefetch=False)
    methods = {config.algorithm: algorithm}
    if (run_dir / BASELINES).is_file():
        methods.update({name: m.to(device) for name, m in baselines(run_dir).items()})
    results = {name: evaluate(m, tasks, num_tasks, steps, task_generator(config, "test"))
               for name, m in methods.items()}
    write_text_atomic(json.dumps(results, indent=1), folder.results_path(run_dir, out, num_tasks, steps, iteration))
    return results
