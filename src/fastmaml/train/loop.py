"""The meta-training loop, shared by ``fm.fit`` and ``fastmaml train``; it reads top to bottom."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch
from torch import Tensor, nn

from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.checkpoint import random_state, restore_random_state, save_atomic
from fastmaml.train.distributed import Context

log = logging.getLogger(__name__)
Step = Callable[[TaskBatch], Tensor]
CHECKPOINT_KEYS = ("algorithm", "optimizer", "scheduler", "iteration", "best", "history", "random")


@dataclass
class LoopState:
    """What a checkpoint must hold beyond the weights to continue a run exactly.

    ``running`` is the (loss sum, iterations) accumulated since the last log line, so that the
    first log line after a resume averages the same iterations as an uninterrupted run's.
    """

    iteration: int = 0
    best: float | None = None
    history: list[dict] = field(default_factory=list)
    running: tuple[float, int] = (0.0, 0)


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint at ``iteration``."""

    def __init__(self, iteration: int, signum: int, run_dir: Path | None) -> None:
        resume = f"; resume with fastmaml train --resume {run_dir}" if run_dir is not None else ""
        super().__init__(f"interrupted at iteration {iteration}{resume}")
        self.iteration, self.signum, self.run_dir = iteration, signum, run_dir


class StopRequest:
    """Turns SIGINT/SIGTERM into a request the loop honours at the end of the current iteration.

    A second signal while a request is pending gets the previous (default) behaviour, so an
    impatient second Ctrl-C still stops the process at once.
    """

    def __init__(self) -> None:
        self.signum = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be installed from the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame) -> None:
            self.signum = signum
            for s, h in previous.items():
                signal.signal(s, h)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


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


def check_finite(loss: Tensor, params: list[nn.Parameter], iteration: int, kept: str, hint: str = "") -> None:
    """Stop before a non-finite loss or meta-gradient reaches the weights (and so any checkpoint).

    ``hint``: the algorithm's own advice (its ``divergence_hint``), appended to the one-line error."""
    value = loss.item()
    grads = [p.grad.detach().abs().amax() for p in params if p.grad is not None and p.grad.numel()]
    # amax propagates NaN; one sync for all parameters
    if math.isfinite(value) and (not grads or bool(torch.stack(grads).isfinite().all())):
        return
    what = "outer loss" if not math.isfinite(value) else "meta-gradient"
    raise FloatingPointError(f"the {what} became non-finite (loss {value}) at iteration {iteration}: lower "
                             f"inner_lr or outer_lr, or check the data for NaN/inf{hint}{kept}")


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
            check_finite(loss, self.params, iteration, kept, self.hint)
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
                                     f"lower inner_lr or outer_lr, or check the data for NaN/inf{self.hint}{kept}")


class Progress:
    """A tqdm bar (loss, tasks/s, ETA) when tqdm is installed and wanted; log lines otherwise.

    The ETA is the remaining iterations at the rate of the last logged interval: tqdm's own average would
    count the first interval's warm-up (compilation, first allocations) for many intervals after."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        self.last = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            except ImportError:
                pass

    def update(self, n: int, **postfix: float) -> None:
        """``n`` more iterations done since the last update; ``postfix`` are the values to show."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.bar is not None:
            self.bar.update(n)
            shown = {k: f"{v:.4g}" for k, v in postfix.items()}
            shown["eta"] = self.bar.format_interval((self.bar.total - self.bar.n) * seconds / max(n, 1))
            self.bar.set_postfix(shown, refresh=False)
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
    on_log: Callable[[LoopState, bool], None] | None = None,
    checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every: int = 0,
    stop: StopRequest | None = None,
    dist: Context | None = None,
    progress: bool = True,
    max_minutes: float = 0.0,
) -> LoopState:
    """Run outer steps from ``state.iteration`` to ``iterations`` (or until ``max_minutes`` have passed).

    Every ``log_every`` iterations the mean outer loss since the last log is recorded: ``on_log`` is
    called with the state and whether this is the run's last log (validation may add to the record),
    then the record is appended to ``metrics_path`` (JSON lines). Every ``checkpoint_every``
    iterations, and when ``stop`` reports a signal, ``checkpoint(state)`` is called; after a signal
    the loop raises :class:`Interrupted`. With a ``dist`` context of several ranks each rank trains on
    its shard of every meta-batch and the meta-gradients are all-reduced (see :mod:`fastmaml.train.distributed`).
    """
    state = state or LoopState()
    step = step or make_step(algorithm)
    dist = dist or Context()
    dist.check_meta_batch(meta_batch_size)
    params = [p for p in algorithm.parameters() if p.requires_grad]
    device, dtype = params[0].device, params[0].dtype
    watch = FiniteWatch(params, getattr(algorithm, "divergence_hint", ""), defer=not checks_each_step(device, dist))
    bar = Progress(iterations, state.iteration, progress)
    (running, count), tick = state.running, time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    deadline = tick + 60 * max_minutes if max_minutes else float("inf")
    saved_at = state.iteration if checkpoint is not None and state.iteration > 0 else None

    def kept() -> str:
        return f"; the last checkpoint (iteration {saved_at}) is intact" if saved_at is not None else ""

    out_of_time = False
    try:
        while state.iteration < iterations and not out_of_time:
            begin = getattr(algorithm, "begin_iteration", None)
            if begin is not None:
                begin(state.iteration, iterations)
            # every rank draws the same full meta-batch, so the task stream does not depend on the world size
            full = tasks.sample_tasks(meta_batch_size, generator)
            batch = dist.shard(full).to(device=device, dtype=dtype, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            buffers = dist.snapshot_buffers(algorithm)
            loss = step(batch)
            dist.allreduce_buffers(algorithm, buffers, len(batch), meta_batch_size)
            # the decisions to stop ride with the gradients, so every rank makes the same ones
            loss, (stopping, out_of_time) = dist.allreduce_grads(
                params, loss, (stop is not None and stop.signum != 0, time.perf_counter() >= deadline))
            watch.observe(loss, state.iteration + 1, kept())
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state.iteration += 1
            loss_sum += loss.detach()
            count += 1
            if state.iteration % log_every == 0 or state.iteration == iterations or out_of_time:
                watch.raise_if_bad(kept())
                running, loss_sum = running + loss_sum.item(), loss_sum.zero_()
                elapsed = time.perf_counter() - tick
                record = {"iteration": state.iteration, "loss": running / count,
                          "tasks_per_s": count * meta_batch_size / elapsed}
                state.history.append(record)
                if on_log is not None:
                    on_log(state, state.iteration == iterations or out_of_time)
                if metrics_path is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                if dist.is_main:
                    bar.update(count, loss=record["loss"], tasks_per_s=record["tasks_per_s"])
                running, count, tick = 0.0, 0, time.perf_counter()
            due = checkpoint_every and state.iteration % checkpoint_every == 0
            if checkpoint is not None and (due or stopping):
                watch.raise_if_bad(kept())
                running, loss_sum = running + loss_sum.item(), loss_sum.zero_()
                state.running = (running, count)
                checkpoint(state)
                saved_at = state.iteration
            if stopping:
                raise Interrupted(state.iteration, stop.signum if stop is not None and stop.signum else
                                  signal.SIGTERM, metrics_path.parent if metrics_path is not None else None)
    finally:
        bar.close()
    state.running = (running + loss_sum.item(), count)
    return state


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
    try:
        algorithm.load_state_dict(checkpoint["algorithm"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint["scheduler"] is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        restore_random_state(checkpoint["random"], generators)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{where} does not match the run's config.yaml ({first}); restore the files the run "
                         "wrote or start again with --overwrite") from None
    running_loss, running_count = checkpoint.get("running", (0.0, 0))  # absent in older checkpoints
    return LoopState(checkpoint["iteration"], checkpoint["best"], list(checkpoint["history"]),
                     (running_loss, running_count))
