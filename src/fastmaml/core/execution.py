"""Running the per-task function over a meta-batch: vmapped, or in a Python loop.

Which is faster depends on the workload, measured on a 2-core CPU with torch 2.13 (benchmarks/speed.py,
benchmarks/RESULTS.md, CPU ms per second-order meta-iteration): on the sinusoid MLP vmap takes 3 ms and
the loop 30 (25 tiny tasks: the loop pays the per-op overhead 25 times); on Conv-4 the loop takes 1164
(strided) and 3944 (max-pool) and vmap 2607 and 12141, with 2.2x and 1.5x the memory (vmap turns every
conv into a grouped convolution over all tasks' activations at once and needs the plain-op batch norm).
So ``auto`` uses the loop for models with convolutions and vmap for the rest, except models vmap cannot
run exactly (recurrent layers; :func:`fastmaml.core.exact.vmap_is_exact`), which take the loop too.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from fastmaml.core.exact import vmap_is_exact, vmapping

Execution = Literal["auto", "vmap", "loop"]
EXECUTIONS = ("auto", "vmap", "loop")
log = logging.getLogger(__name__)
_CONV = (nn.modules.conv._ConvNd,)


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` contains a convolution (the loop beats vmap on those; see the module docstring)."""
    return any(isinstance(m, _CONV) for m in model.modules())


def run_loop(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` on each task in turn; outputs stacked along a new leading task dimension."""
    outputs = [fn(*(t[i] for t in batched)) for i in range(batched[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*outputs))


def run_vmap(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` vmapped over the leading task dimension (random ops draw independently per task)."""
    with vmapping():
        return torch.func.vmap(fn, randomness="different")(*batched)


def prefers_loop(model: nn.Module | None, *batched: Tensor) -> bool:
    """The ``auto`` rule: the loop for convolutional models (or image-shaped inputs) and for models vmap
    cannot make exact (:func:`fastmaml.core.exact.vmap_is_exact`), vmap otherwise."""
    if model is not None:
        return has_conv(model) or not vmap_is_exact(model)
    # (tasks, examples, C, H, W) or longer: images, almost surely a convolutional model.
    return batched[0].dim() >= 5


class TaskMapper:
    """Maps a per-task function over tasks with the chosen execution path.

    ``auto`` picks the loop for convolutional models (see :func:`prefers_loop`) and otherwise tries
    vmap once; if the module cannot be vmapped it warns once naming the reason and uses the loop from
    then on.
    """

    def __init__(self, execution: Execution = "auto", owner: str = "model", model: nn.Module | None = None) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r} is not one of {EXECUTIONS}; pick one of them")
        self.execution = execution
        self.owner = owner
        self.model = model

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
        if self.execution == "loop":
            return run_loop(fn, *batched)
        if self.execution == "vmap":
            return run_vmap(fn, *batched)
        if prefers_loop(self.model, *batched):
            self.execution = "loop"
            return run_loop(fn, *batched)
        try:
            outputs = run_vmap(fn, *batched)
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
        self.execution = "vmap"
        return outputs
