"""Supervised meta-training's part of the one loop: outer steps over meta-batches of tasks.

:func:`meta_train` is what ``fm.fit`` and ``fastmaml train`` run: :class:`OuterSteps` (sample a meta-batch,
``algorithm.outer_loss(batch).backward()``, all-reduce across processes, check, step the optimizer) inside
:func:`fastmaml.train.loop.run_loop`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.errors import OutOfMemory
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.checkpoint import random_state, restore_random_state, save_atomic
from fastmaml.train.distributed import Context
from fastmaml.train.folder import restoring
from fastmaml.train.loop import LoopState, StopRequest, check_finite, run_loop

Step = Callable[[TaskBatch], Tensor]
CHECKPOINT_KEYS = ("algorithm", "optimizer", "scheduler", "iteration", "best", "history", "random")
RATES, SOURCE = "inner_lr or outer_lr", "the data for NaN/inf"  # what a non-finite step names


def make_step(algorithm: Any) -> Step:
    """One outer step: ``algorithm.outer_loss(batch).backward()``, the documented idiom.

    The outer loss picks the fastest exact path itself (``fastmaml.core.compiled``), so the trainer runs
    exactly what a user's own loop runs.
    """

    def step(batch: TaskBatch) -> Tensor:
        loss = algorithm.outer_loss(batch)
        loss.backward()
        return loss.detach()

    return step


def checks_each_step(device: torch.device, dist: Context) -> bool:
    """Whether every iteration reads its loss on the host: on the CPU (free there) and with several ranks
    (their stop decisions are read anyway). On a GPU nothing in an iteration waits for the device: the
    loss is summed there and read at log lines and checkpoints."""
    return device.type == "cpu" or dist.enabled


class FiniteWatch:
    """Checks each iteration's loss and meta-gradient for NaN/inf before they can reach a checkpoint.

    ``defer=False`` (the CPU, where reading a value costs nothing) checks every iteration at once with
    :func:`check_finite`. ``defer=True`` (a GPU) records the first non-finite iteration on the device, without
    waiting for it, and :meth:`raise_if_bad` raises at the next log line or checkpoint, whichever comes first:
    the weights in memory may then be spoilt, but no checkpoint ever holds them.
    """

    def __init__(self, params: list[nn.Parameter], hint: str, defer: bool) -> None:
        self.params, self.hint, self.defer = params, hint, defer
        self.first: Tensor | None = None  # (iteration, loss) of the first non-finite step; iteration -1: none

    def observe(self, loss: Tensor, iteration: int, kept: str) -> None:
        if not self.defer:
            value = loss.item()
            what = "outer loss" if not math.isfinite(value) else "meta-gradient"
            check_finite(value, (p.grad for p in self.params if p.grad is not None), iteration, kept, what, RATES,
                         SOURCE + self.hint)
            return
        grads = [p.grad.detach() for p in self.params if p.grad is not None and p.grad.numel()]
        norms = torch._foreach_norm(grads) if grads else []  # inf/NaN propagate; one fused kernel
        values = torch.stack([loss.detach().to(torch.float64).reshape(()), *(n.to(torch.float64) for n in norms)])
        bad = ~values.isfinite().all()
        record = torch.stack([torch.full_like(values[0], iteration), values[0]])
        if self.first is None:
            self.first = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=values.device)
        self.first = torch.where(bad & (self.first[0] < 0), record, self.first)

    def raise_if_bad(self, kept: str) -> None:
        if self.first is None:
            return
        iteration, value = self.first.tolist()
        if iteration >= 0:
            what = "outer loss" if not math.isfinite(value) else "meta-gradient"
            raise FloatingPointError(f"the {what} became non-finite (loss {value}) at iteration {int(iteration)}: "
                                     f"lower {RATES}, or check {SOURCE}{self.hint}{kept}")


class OuterSteps:
    """One outer step per iteration; a log line every ``log_every``: the mean loss and tasks per second.

    The loss is summed on the device and read only when a line is due or a checkpoint is written (with a
    GPU nothing in an iteration waits for it); ``running`` carries a block in progress across a resume.
    """

    def __init__(self, algorithm: nn.Module, optimizer: torch.optim.Optimizer, tasks, generator: torch.Generator,
                 meta_batch_size: int, iterations: int, step: Step, scheduler=None, dist: Context | None = None,
                 running: tuple[float, int] = (0.0, 0)) -> None:
        self.algorithm, self.optimizer, self.scheduler, self.step_fn = algorithm, optimizer, scheduler, step
        self.iterations = iterations  # the run's total, for algorithms with a schedule (begin_iteration)
        self.tasks, self.generator, self.meta_batch_size = tasks, generator, meta_batch_size
        self.dist = dist or Context()
        self.dist.check_meta_batch(meta_batch_size)
        self.params = [p for p in algorithm.parameters() if p.requires_grad]
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        defer = not checks_each_step(self.device, self.dist)
        self.watch = FiniteWatch(self.params, getattr(algorithm, "divergence_hint", ""), defer)
        self.carried, self.count = running  # the loss sum read so far, and the iterations it spans
        self.unread = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device
        self.tick = time.perf_counter()

    @property
    def solo(self) -> bool:
        """One process decides alone: a signal during a step stops the loop after it (several agree later)."""
        return not self.dist.enabled

    def step(self, iteration: int, stopping: bool, out_of_time: bool, kept: str) -> tuple[bool, bool]:
        begin = getattr(self.algorithm, "begin_iteration", None)
        if begin is not None:
            begin(iteration - 1, self.iterations)
        # every rank draws the same full meta-batch, so the task stream does not depend on the world size
        full = self.tasks.sample_tasks(self.meta_batch_size, self.generator)
        batch = self.dist.shard(full).to(device=self.device, dtype=self.dtype, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        buffers = self.dist.snapshot_buffers(self.algorithm)
        try:
            loss = self.step_fn(batch)
        except OutOfMemory as error:  # nothing of this step reached the weights or a checkpoint: say so
            error.args = (f"{error}{kept}",)
            raise
        self.dist.allreduce_buffers(self.algorithm, buffers, len(batch), self.meta_batch_size)
        # the decisions to stop ride with the gradients, so every rank makes the same ones
        loss, (stopping, out_of_time) = self.dist.allreduce_grads(self.params, loss, (stopping, out_of_time))
        self.watch.observe(loss, iteration, kept)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.unread += loss.detach()
        self.count += 1
        return stopping, out_of_time

    def lines(self, iteration: int, due: bool, kept: str) -> tuple[list[dict], dict[str, float] | None]:
        if not due:
            return [], None
        self.settle(kept)
        loss_sum, count = self.running()
        elapsed = time.perf_counter() - self.tick
        line = {"iteration": iteration, "loss": loss_sum / count,
                "tasks_per_s": count * self.meta_batch_size / elapsed}
        self.carried, self.count, self.tick = 0.0, 0, time.perf_counter()
        return [line], {"loss": line["loss"], "tasks_per_s": line["tasks_per_s"]}

    def settle(self, kept: str) -> None:
        self.watch.raise_if_bad(kept)

    def running(self) -> tuple[float, int]:
        self.carried += self.unread.item()
        self.unread.zero_()
        return self.carried, self.count


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
    writer: Any = None,
    on_log: Callable[[LoopState, bool], None] | None = None,
    checkpoint: Callable[[LoopState], Path] | None = None,
    checkpoint_every: int = 0,
    keep_every: int = 0,
    stop: StopRequest | None = None,
    dist: Context | None = None,
    progress: bool = True,
    max_minutes: float = 0.0,
) -> LoopState:
    """Run outer steps from ``state.iteration`` to ``iterations`` (or until ``max_minutes`` have passed).

    The loop's cadences (log lines, validation through ``on_log``, checkpoints, signals) are
    :func:`fastmaml.train.loop.run_loop`'s. With a ``dist`` context of several ranks each rank trains on its
    shard of every meta-batch and the meta-gradients are all-reduced (see :mod:`fastmaml.train.distributed`).

    Example:
        >>> import fastmaml as fm
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]))
        >>> state = meta_train(maml, torch.optim.Adam(maml.parameters()), fm.Sinusoid(), torch.Generator(),
        ...                    iterations=2, meta_batch_size=4, log_every=1, progress=False)
        >>> [line["iteration"] for line in state.history]
        [1, 2]
    """
    state = state or LoopState()
    steps = OuterSteps(algorithm, optimizer, tasks, generator, meta_batch_size, iterations,
                       step or make_step(algorithm), scheduler, dist, state.running)
    return run_loop(steps, state, iterations=iterations, log_every=log_every, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, keep_every=keep_every, on_log=on_log,
                    metrics_path=metrics_path, writer=writer, stop=stop, max_minutes=max_minutes, progress=progress)


def save_run_checkpoint(path: Path, algorithm: nn.Module, optimizer: torch.optim.Optimizer, state: LoopState,
                        generators: dict[str, torch.Generator], scheduler=None, extra: dict | None = None) -> None:
    """Everything needed to continue the run bit for bit, in ``weights_only``-loadable types."""
    save_atomic({
        **(extra or {}),
        "algorithm": algorithm.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "iteration": state.iteration,
        "best": state.best,
        "history": state.history,
        "running": list(state.running),
        "random": random_state(generators),
    }, path)


def restore_run_checkpoint(checkpoint: dict, algorithm: nn.Module, optimizer: torch.optim.Optimizer,
                           generators: dict[str, torch.Generator], scheduler=None,
                           where: str = "checkpoint") -> LoopState:
    """Load a training checkpoint into freshly built objects; a mismatch is a one-line ``ValueError``."""
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ValueError(f"{where} is not a fastmaml training checkpoint (missing {', '.join(missing)}); "
                         "point --resume at a folder `fastmaml train` wrote")
    with restoring(where):
        algorithm.load_state_dict(checkpoint["algorithm"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint["scheduler"] is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        restore_random_state(checkpoint["random"], generators)
    running_loss, running_count = checkpoint.get("running", (0.0, 0))  # absent in older checkpoints
    return LoopState(checkpoint["iteration"], checkpoint["best"], list(checkpoint["history"]),
                     (running_loss, running_count))
