"""The one training loop, for every kind of run; it reads top to bottom.

:func:`run_loop` owns what every run shares: iterations up to a total or a deadline, SIGINT/SIGTERM
(a checkpoint, then :class:`Interrupted`), periodic checkpoints, log lines (metrics.jsonl, TensorBoard,
the progress bar) and the state a resume needs. A kind of run plugs in its :class:`Steps`: one
iteration's work, its metrics lines and its deferred checks. Supervised meta-learning's steps are
:class:`fastmaml.train.outer.OuterSteps`, meta-RL's :class:`fastmaml.rl.train.MetaRLSteps`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from fastmaml.train.folder import append_metrics, keep_snapshot

log = logging.getLogger(__name__)


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


class Steps(Protocol):
    """A kind of run's part of :func:`run_loop`.

    ``step`` runs iteration ``iteration`` (1-based) and returns the stop decisions, which a distributed kind
    agrees on across its processes; ``lines`` returns the metrics lines of the iterations since the last call
    (``due``: a log line is due, so a kind that logs in blocks returns its block) and what the progress bar
    shows (None when not ``due``); ``settle`` raises a failure found since the last call (a non-finite step
    checked late) before anything is written; ``running`` is what a checkpoint keeps of a block in progress.
    ``kept`` names the last checkpoint, for the one-line errors. A kind whose one process decides alone may set
    ``solo = True``: a signal that arrives during a step then stops the loop after that step, rather than after
    the next (whose start is where several processes agree on it).
    """

    def step(self, iteration: int, stopping: bool, out_of_time: bool, kept: str) -> tuple[bool, bool]: ...

    def lines(self, iteration: int, due: bool, kept: str) -> tuple[list[dict], dict[str, float] | None]: ...

    def settle(self, kept: str) -> None: ...

    def running(self) -> tuple[float, int]: ...


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


def check_finite(loss: float, tensors: Iterable[Tensor], iteration: int, kept: str, what: str, rates: str,
                 source: str) -> None:
    """Stop before a non-finite ``loss`` or tensor (a meta-gradient, new weights) reaches the weights, and so any
    checkpoint: one line naming ``what`` went wrong at ``iteration``, the ``rates`` to lower and the ``source``
    to check."""
    values = [t.detach().abs().amax() for t in tensors if t is not None and t.numel()]
    # amax propagates NaN; one read for all of them
    if math.isfinite(loss) and (not values or bool(torch.stack(values).isfinite().all())):
        return
    raise FloatingPointError(f"the {what} became non-finite (loss {loss}) at iteration {iteration}: lower {rates}, "
                             f"or check {source}{kept}")


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


def run_loop(
    steps: Steps,
    state: LoopState,
    *,
    iterations: int,
    log_every: int = 100,
    checkpoint: Callable[[LoopState], Path] | None = None,
    checkpoint_every: int = 0,
    keep_every: int = 0,
    on_log: Callable[[LoopState, bool], None] | None = None,
    metrics_path: Path | None = None,
    writer: Any = None,
    stop: StopRequest | None = None,
    max_minutes: float = 0.0,
    progress: bool = True,
) -> LoopState:
    """Run ``steps`` from ``state.iteration`` to ``iterations`` (or until ``max_minutes`` have passed).

    Every ``log_every`` iterations (and at the last) a log line is due: the new metrics lines join
    ``state.history``, ``on_log(state, last)`` may add to the last one (validation), then they are appended to
    ``metrics_path`` (JSON lines; a run folder's metrics.jsonl) and written as TensorBoard scalars through
    ``writer``. Every ``checkpoint_every`` iterations, and when ``stop`` reports a signal, ``checkpoint(state)``
    writes a checkpoint and returns its path; every ``keep_every`` iterations it is also called and a copy
    of its file is kept (:func:`fastmaml.train.folder.keep_snapshot`: ``snapshots/checkpoint-<iteration>.pt``),
    as maml_rl kept every 25th iteration's policy. After a signal the loop raises :class:`Interrupted`. Only
    the process that writes passes ``metrics_path``, ``writer``, ``checkpoint`` and ``progress``.
    """
    bar = Progress(iterations, state.iteration, progress)
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else float("inf")
    saved_at = state.iteration if checkpoint is not None and state.iteration > 0 else None
    shown_at, out_of_time = state.iteration, False

    def kept() -> str:
        return f"; the last checkpoint (iteration {saved_at}) is intact" if saved_at is not None else ""

    try:
        while state.iteration < iterations and not out_of_time:
            signalled = stop is not None and stop.signum != 0
            stopping, out_of_time = steps.step(state.iteration + 1, signalled, time.perf_counter() >= deadline,
                                               kept())
            if getattr(steps, "solo", False) and stop is not None and stop.signum:
                stopping = True  # a signal during the step: nothing to agree on, so stop after it
            state.iteration += 1
            last = state.iteration == iterations or out_of_time
            due = state.iteration % log_every == 0 or last
            lines, shown = steps.lines(state.iteration, due, kept())
            state.history.extend(lines)
            if due and on_log is not None:
                on_log(state, last)
            if lines and metrics_path is not None:
                append_metrics(metrics_path, lines)
            if lines and writer is not None:
                _scalars(writer, lines)
            if shown is not None:
                bar.update(state.iteration - shown_at, **shown)
                shown_at = state.iteration
            keeping = bool(keep_every) and state.iteration % keep_every == 0
            if checkpoint is not None and ((checkpoint_every and state.iteration % checkpoint_every == 0) or keeping
                                           or stopping):
                steps.settle(kept())
                state.running = steps.running()
                written = checkpoint(state)
                saved_at = state.iteration
                if keeping:
                    if written is None:
                        raise TypeError(f"keep_every={keep_every} copies the file checkpoint(state) wrote; make "
                                        "checkpoint return its path")
                    keep_snapshot(written, state.iteration)
            if stopping:
                raise Interrupted(state.iteration, stop.signum if stop is not None and stop.signum else
                                  signal.SIGTERM, metrics_path.parent if metrics_path is not None else None)
    finally:
        bar.close()
    state.running = steps.running()
    return state


def _scalars(writer: Any, lines: list[dict]) -> None:
    """Each line's numbers as TensorBoard scalars at its iteration (``val`` under ``val/score``)."""
    for line in lines:
        for key, value in line.items():
            if key != "iteration" and isinstance(value, (int, float)):
                writer.add_scalar(f"train/{key}" if key != "val" else "val/score", value, line["iteration"])
    writer.flush()  # a killed run keeps what it logged, as metrics.jsonl does
