"""Running the per-task function over a meta-batch: vmapped, or in a Python loop."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Execution = Literal["auto", "vmap", "loop"]
EXECUTIONS = ("auto", "vmap", "loop")
log = logging.getLogger(__name__)


def run_loop(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` on each task in turn; outputs stacked along a new leading task dimension."""
    outputs = [fn(*(t[i] for t in batched)) for i in range(batched[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*outputs))


def run_vmap(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` vmapped over the leading task dimension (random ops draw independently per task)."""
    return torch.func.vmap(fn, randomness="different")(*batched)


class TaskMapper:
    """Maps a per-task function over tasks with the chosen execution path.

    ``auto`` tries vmap once and, if the module cannot be vmapped, warns once naming the reason and
    uses the loop from then on.
    """

    def __init__(self, execution: Execution = "auto", owner: str = "model") -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r} is not one of {EXECUTIONS}; pick one of them")
        self.execution = execution
        self.owner = owner

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
        if self.execution == "loop":
            return run_loop(fn, *batched)
        if self.execution == "vmap":
            return run_vmap(fn, *batched)
        try:
            return run_vmap(fn, *batched)
        except (RuntimeError, NotImplementedError) as error:
            # A genuine error (bad shapes) raises again from the loop below, with a clearer trace.
            outputs = run_loop(fn, *batched)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warnings.warn(
                f"vmap cannot run {self.owner} ({reason}); using the Python loop over tasks "
                "(pass execution='loop' to choose it and silence this warning)",
                stacklevel=3,
            )
            self.execution = "loop"
            return outputs
