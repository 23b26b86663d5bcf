"""Running the per-task function over a meta-batch, vmapped or in a Python loop: the one decision.

:func:`decide` is the only place where ``execution="auto"`` becomes ``"vmap"`` or ``"loop"``, from the
model and the size of one task; :class:`TaskMapper` applies it (once, logged) and everything else —
the outer loss, its fast gradient path, evaluation — reads the mapper's resolved ``execution``.

Measured on a 2-core CPU, torch 2.13, one thread, second-order MAML (benchmarks/RESULTS.md, "Speed"):

- MLP on the sinusoid (25 tasks of 20 points): vmap 3 ms, the loop 30 (the loop pays the per-op
  overhead once per task).
- Conv-4 on Omniglot 5-way 1-shot with 10 images per task (the MAML paper's own tasks: 1 query image
  per class): vmap 302 ms, the loop 466 (32 tasks' small convolutions batched into one grouped
  convolution use the core better); 30 images per task: vmap 591, loop 696; 40 images per task
  (20-way 1-shot, 16 tasks, 5 steps): vmap 3.08 s, the loop 2.39; 80 images per task (15 query per
  class): vmap 2607 ms, the loop 1164, at half vmap's memory.

- MLPs with large tasks (benchmarks/mlp_crossover.py: 25 tasks, second order, two threads, torch 2.14;
  RESULTS.md, "Execution: MLPs with large tasks"): the loop catches up where a task's rows times the
  widest layer reach about 150,000 activations, whatever the width: 40 wide, 4,000 rows per task, loop/vmap
  1.02; 100 wide, 1,000 rows 1.25 and 2,000 rows 0.77; 256 wide, 500 rows 1.13 and 1,000 rows 0.72.
  Meta-RL's tasks are such tasks: HalfCheetah's 20 trajectories x 200 steps (4,000 rows per episode
  set) through a 100-wide policy take TRPO's Fisher-vector product 0.9 s looped against 2.4 s vmapped.

So vmap runs everything except large tasks: convolutional models over :data:`VMAP_MAX_CONV_INPUTS` input
elements per task (support + query; 24,576 is about 31 Omniglot images, between the 30 where vmap wins and the
40 where the loop wins), and other models over :data:`VMAP_MAX_ACTIVATIONS` rows per task (support + query
examples) times their widest linear layer (:func:`activations`). vmap is never chosen for a model where it is
not exact (:func:`fastmaml.core.exact.vmap_is_exact`: recurrent layers).
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
VMAP_MAX_CONV_INPUTS = 24_576
VMAP_MAX_ACTIVATIONS = 150_000
log = logging.getLogger(__name__)
_CONV = (nn.modules.conv._ConvNd,)


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` contains a convolution."""
    return any(isinstance(m, _CONV) for m in model.modules())


def task_inputs(*batched: Tensor | None) -> int:
    """Input elements of one task: its support and query inputs, ``batched[0]`` and ``batched[2]``."""
    return sum(t[0].numel() for t in batched[::2][:2] if t is not None and t.shape[0])


def activations(model: nn.Module, inputs: int) -> float:
    """Rows per task times the widest linear layer (0 without one): a task's rows are its input elements
    over the first linear layer's input size (each example meets it once: 17 observation values, a
    flattened 28x28 image), the width is the largest input or output size of the linear layers."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        return 0.0
    return inputs / linear[0].in_features * max(max(m.in_features, m.out_features) for m in linear)


def decide(model: nn.Module | None, *batched: Tensor | None) -> Literal["vmap", "loop"]:
    """``execution="auto"`` for ``model`` on a meta-batch ``(support_x, support_y, query_x, query_y, ...)``.

    Example:
        >>> import torch, fastmaml as fm
        >>> decide(fm.models.MLP([1, 40, 40, 1]), *fm.Sinusoid().sample_tasks(2, torch.Generator()).tensors())
        'vmap'
    """
    if model is None:  # no module to inspect: (tasks, examples, C, H, W) means images, a conv model
        conv = batched[0] is not None and batched[0].dim() >= 5
    else:
        if not vmap_is_exact(model):
            return "loop"
        conv = has_conv(model)
    inputs = task_inputs(*batched)
    if conv:
        return "vmap" if inputs <= VMAP_MAX_CONV_INPUTS else "loop"
    if model is None:
        return "vmap"
    return "vmap" if activations(model, inputs) <= VMAP_MAX_ACTIVATIONS else "loop"


def run_loop(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` on each task in turn; outputs stacked along a new leading task dimension."""
    outputs = [fn(*(t[i] for t in batched)) for i in range(batched[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*outputs))


def run_vmap(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
    """``fn`` vmapped over the leading task dimension (random ops draw independently per task)."""
    with vmapping():
        return torch.func.vmap(fn, randomness="different")(*batched)


class TaskMapper:
    """Maps a per-task function over tasks with the chosen execution path.

    ``auto`` is settled by :func:`decide` on the first meta-batch (:meth:`resolve`, logged). If vmap
    then cannot run the module it warns once naming the reason and uses the loop from then on.
    """

    def __init__(self, execution: Execution = "auto", owner: str = "model", model: nn.Module | None = None) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r} is not one of {EXECUTIONS}; pick one of them")
        self.execution: str = execution
        self.owner = owner
        self.model = model
        self._tried = execution != "auto"  # an explicit vmap raises; only auto's choice falls back

    def resolve(self, *batched: Tensor) -> str:
        """The execution for this meta-batch (settling ``auto`` once)."""
        if self.execution == "auto":
            self.execution = decide(self.model, *batched)
            log.info("execution=auto: %s for %s (%s input elements per task)", self.execution, self.owner,
                     task_inputs(*batched))
        return self.execution

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
        if self.resolve(*batched) == "loop":
            return run_loop(fn, *batched)
        if self._tried:
            return run_vmap(fn, *batched)
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
        self._tried = True
        return outputs
