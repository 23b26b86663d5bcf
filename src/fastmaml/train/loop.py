"""The meta-training loop, shared by ``fm.fit`` and ``fastmaml train``; it reads top to bottom."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.checkpoint import random_state, restore_random_state, save_atomic

log = logging.getLogger(__name__)
Step = Callable[[TaskBatch], Tensor]


@dataclass
class LoopState:
    """What a checkpoint must hold beyond the weights to continue a run exactly."""

    iteration: int = 0
    best: float | None = None
    history: list[dict] = field(default_factory=list)


def eager_step(algorithm: nn.Module) -> Step:
    """The outer loss of a meta-batch; its meta-gradient is left in ``.grad``."""

    def step(batch: TaskBatch) -> Tensor:
        loss = algorithm.outer_loss(batch)
        loss.backward()
        return loss.detach()

    return step


def make_step(algorithm: nn.Module, compile: bool) -> Step:
    """The fastest exact outer step for the workload (benchmarks/RESULTS.md, "Speed").

    Convolutional models: tasks one at a time, each task's graph freed by its own backward. Others:
    the compiled step when ``compile``, else one vmapped graph. An explicit ``execution`` of the
    algorithm, and algorithms that override the outer loss, always get ``outer_loss().backward()``.
    """
    from fastmaml.core.compiled import outer_step, plain_outer_loss
    from fastmaml.core.execution import has_conv

    if not plain_outer_loss(algorithm) or algorithm.mapper.execution != "auto":
        return outer_step(algorithm, "outer_loss")
    if compile:
        return outer_step(algorithm, "compiled")
    return outer_step(algorithm, "loop" if has_conv(algorithm.model) else "outer_loss")


def check_finite(loss: Tensor, iteration: int, where: Path | None) -> None:
    if not math.isfinite(loss.item()):
        kept = f"; the last checkpoint in {where} is intact" if where is not None else ""
        raise FloatingPointError(
            f"the outer loss became {loss.item()} at iteration {iteration}: lower inner_lr or outer_lr, "
            f"or check the data for NaN/inf{kept}"
        )


class Progress:
    """A tqdm bar (loss, tasks/s, ETA) when tqdm is installed and wanted; log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, smoothing=0.05)
            except ImportError:
                pass

    def update(self, n: int, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        else:
            log.info(" ".join(f"{k}={v:.4g}" for k, v in postfix.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def meta_train(
    algorithm: nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks,
    generator: torch.Generator,
    *,
    iterations: int,
    meta_batch_size: int,
    step: Step | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    state: LoopState | None = None,
    log_every: int = 100,
    metrics_path: Path | None = None,
    on_log: Callable[[LoopState], None] | None = None,
    progress: bool = True,
    max_minutes: float = 0.0,
) -> LoopState:
    """Run outer steps from ``state.iteration`` to ``iterations`` (or until ``max_minutes`` have passed).

    Every ``log_every`` iterations the mean outer loss since the last log is appended to
    ``metrics_path`` (JSON lines) and ``on_log`` is called (validation, checkpoints).
    """
    state = state or LoopState()
    step = step or eager_step(algorithm)
    device = next(algorithm.parameters()).device
    bar = Progress(iterations, state.iteration, progress)
    running, count, tick = 0.0, 0, time.perf_counter()
    deadline = tick + 60 * max_minutes if max_minutes else float("inf")
    try:
        while state.iteration < iterations and time.perf_counter() < deadline:
            if hasattr(algorithm, "begin_iteration"):
                algorithm.begin_iteration(state.iteration, iterations)
            batch = tasks.sample_tasks(meta_batch_size, generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = step(batch)
            check_finite(loss, state.iteration, metrics_path.parent if metrics_path else None)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state.iteration += 1
            running, count = running + loss.item(), count + 1
            if state.iteration % log_every == 0 or state.iteration == iterations or time.perf_counter() >= deadline:
                elapsed = time.perf_counter() - tick
                record = {"iteration": state.iteration, "loss": running / count,
                          "tasks_per_s": count * meta_batch_size / elapsed}
                state.history.append(record)
                if metrics_path is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                if on_log is not None:
                    on_log(state)
                bar.update(count, loss=record["loss"], tasks_per_s=record["tasks_per_s"])
                running, count, tick = 0.0, 0, time.perf_counter()
    finally:
        bar.close()
    return state


def save_run_checkpoint(path: Path, algorithm: nn.Module, optimizer: torch.optim.Optimizer, state: LoopState,
                        generators: dict[str, torch.Generator], scheduler=None) -> None:
    save_atomic({
        "algorithm": algorithm.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "iteration": state.iteration,
        "best": state.best,
        "history": state.history,
        "random": random_state(generators),
    }, path)


def restore_run_checkpoint(checkpoint: dict, algorithm: nn.Module, optimizer: torch.optim.Optimizer,
                           generators: dict[str, torch.Generator], scheduler=None) -> LoopState:
    algorithm.load_state_dict(checkpoint["algorithm"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    restore_random_state(checkpoint["random"], generators)
    return LoopState(checkpoint["iteration"], checkpoint["best"], list(checkpoint["history"]))
