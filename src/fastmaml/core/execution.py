"""Running the per-task function over a meta-batch, vmapped or in a Python loop: the one decision.

:func:`decide` is the only place where ``execution="auto"`` becomes ``"vmap"`` or ``"loop"``, from the
model and the size of one task; :class:`TaskMapper` applies it (once, logged) and everything else —
the outer loss, its fast gradient path, evaluation — reads the mapper's resolved ``execution``.

Measured on a 2-core CPU, torch 2.13, one thread, second-order MAML (benchmarks/RESULTS.md, "CPU speed"):

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

So on the CPU vmap runs everything except large tasks: convolutional models over
:data:`VMAP_MAX_CONV_INPUTS` input elements per task (support + query; 24,576 is about 31 Omniglot images,
between the 30 where vmap wins and the 40 where the loop wins), and other models over
:data:`VMAP_MAX_ACTIVATIONS` rows per task (support + query examples) times their widest linear layer
(:func:`activations`).

On a GPU (one NVIDIA H200, torch 2.11 + CUDA 13, float32, strided Conv-4, second order, Adam step included,
CUDA synchronised around each iteration; learn2learn 0.2.0 beside it on the same tasks) small convolutions
are bound by kernel launches and the host, not by arithmetic, so batching the tasks' kernels wins at every
size: the paper's 5-way 1-shot tasks (10 images per task) vmap 23.6 ms, the loop 442 (learn2learn 416);
15 query images per class (80 per task) vmap 26.3, the loop 480 (learn2learn 441); 20-way 1-shot, 16 tasks,
5 steps (40 per task) vmap 84, the loop 793 (learn2learn 750). There is no crossover: on any device but the
CPU, vmap runs every task size. Where a meta-batch's graph does not fit in the device's memory, the outer
step runs in chunks of tasks (each chunk vmapped and differentiated before the next is built; halved on
each out-of-memory error, logged once), so memory, not speed, is what bounds vmap there.

vmap is never chosen for a model where it is not exact (:func:`fastmaml.core.exact.vmap_is_exact`:
recurrent layers), on any device.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from fastmaml.core.exact import vmap_is_exact, vmapping
from fastmaml.errors import OutOfMemory

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


def decide(model: nn.Module | None, *batched: Tensor | None,
           device: torch.device | str | None = None) -> Literal["vmap", "loop"]:
    """``execution="auto"`` for ``model`` on a meta-batch ``(support_x, support_y, query_x, query_y, ...)``.

    ``device``: where the step runs (default: the device of the first tensor). On the CPU the measured size
    thresholds apply; on any other device vmap runs every task size (see the module docstring).

    Example:
        >>> import torch, fastmaml as fm
        >>> decide(fm.models.MLP([1, 40, 40, 1]), *fm.Sinusoid().sample_tasks(2, torch.Generator()).tensors())
        'vmap'
        >>> conv, images = fm.models.Conv4(1, 5), torch.zeros(2, 80, 1, 28, 28)   # 80 images per task
        >>> decide(conv, images, None, images), decide(conv, images, None, images, device="cuda")
        ('loop', 'vmap')
    """
    if model is not None and not vmap_is_exact(model):
        return "loop"
    if device is None:
        device = next((t.device for t in batched if t is not None), torch.device("cpu"))
    if torch.device(device).type != "cpu":
        return "vmap"
    if model is None:  # no module to inspect: (tasks, examples, C, H, W) means images, a conv model
        conv = batched[0] is not None and batched[0].dim() >= 5
    else:
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


def run_vmap(fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor, chunk: int | None = None
             ) -> tuple[Tensor, ...]:
    """``fn`` vmapped over the leading task dimension (random ops draw independently per task).

    ``chunk``: vmap at most this many tasks at a time and concatenate (bounds the forward's memory)."""
    with vmapping():
        if chunk is None or chunk >= batched[0].shape[0]:
            return torch.func.vmap(fn, randomness="different")(*batched)
        parts = [torch.func.vmap(fn, randomness="different")(*(t[i:i + chunk] for t in batched))
                 for i in range(0, batched[0].shape[0], chunk)]
        return tuple(torch.cat(column) for column in zip(*parts))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device's out-of-memory error (a ``RuntimeError`` subclass on CUDA)."""
    return isinstance(error, torch.cuda.OutOfMemoryError)


_LOGGED: set[tuple] = set()


def log_once(message: str, *args: object) -> None:
    """``log.info`` a decision once per process (many algorithm objects take the same decision)."""
    key = (message, *args)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info(message, *args)


class TaskMapper:
    """Maps a per-task function over tasks with the chosen execution path.

    ``auto`` is settled by :func:`decide` on the first meta-batch (:meth:`resolve`, logged once per process
    and decision). If vmap then cannot run the module it warns once naming the reason and uses the loop
    from then on. ``chunk`` (None: the whole meta-batch) is how many tasks one vmap holds; it is halved
    when the device runs out of memory (:meth:`shrink`) and never grows back.

    Example:
        >>> mapper = TaskMapper("loop")
        >>> mapper(lambda x: (x.sum(),), torch.ones(3, 4))  # one output per task, stacked over tasks
        (tensor([4., 4., 4.]),)
        >>> TaskMapper("auto", model=fm.models.MLP([1, 40, 40, 1])).resolve(torch.zeros(25, 10, 1))
        'vmap'
    """

    def __init__(self, execution: Execution = "auto", owner: str = "model", model: nn.Module | None = None) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r} is not one of {EXECUTIONS}; pick one of them")
        self.execution: str = execution
        self.owner = owner
        self.model = model
        self.chunk: int | None = None
        self._tried = execution != "auto"  # an explicit vmap raises; only auto's choice falls back

    def resolve(self, *batched: Tensor) -> str:
        """The execution for this meta-batch (settling ``auto`` once)."""
        if self.execution == "auto":
            self.execution = decide(self.model, *batched)
            device = next((t.device for t in batched if t is not None), torch.device("cpu"))
            log_once("execution=auto: %s for %s on %s (%s input elements per task)", self.execution, self.owner,
                     device.type, task_inputs(*batched))
        return self.execution

    def shrink(self, tasks: int, error: BaseException) -> int:
        """Halve the tasks per vmap after ``error`` (out of memory) on ``tasks`` tasks; raises
        :class:`OutOfMemory` with the fix when one task at a time did not fit either."""
        current = min(self.chunk or tasks, tasks)
        if current <= 1 or self.execution != "vmap":
            raise OutOfMemory(
                f"the device ran out of memory on {self.owner} with one task at a time "
                f"({_first_line(error)}); lower meta_batch_size, shots or query_shots, use a smaller model, "
                "or train on a device with more memory"
            ) from None
        self.chunk = current // 2
        log.warning("out of device memory with %d tasks vmapped at once for %s; running %d at a time from now on "
                    "(a smaller meta_batch_size avoids the retry)", current, self.owner, self.chunk)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.chunk

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor, retry: bool = True
                 ) -> tuple[Tensor, ...]:
        """``fn`` over the tasks of ``batched``; ``retry=False`` leaves an out-of-memory error to the caller
        (the outer step, which chunks its gradient too, not only this forward)."""
        if self.resolve(*batched) == "loop":
            return run_loop(fn, *batched)
        while True:
            try:
                return self._vmap(fn, *batched)
            except Exception as error:
                if not (retry and is_out_of_memory(error)):
                    raise
                self.shrink(batched[0].shape[0], error)

    def _vmap(self, fn: Callable[..., tuple[Tensor, ...]], *batched: Tensor) -> tuple[Tensor, ...]:
        if self._tried:
            return run_vmap(fn, *batched, chunk=self.chunk)
        try:
            outputs = run_vmap(fn, *batched, chunk=self.chunk)
        except (RuntimeError, NotImplementedError) as error:
            if is_out_of_memory(error):  # memory, not vmap, is short: chunk (never the slow loop for good)
                raise
            # A genuine error (bad shapes) raises again from the loop below, with a clearer trace.
            outputs = run_loop(fn, *batched)
            warnings.warn(
                f"vmap cannot run {self.owner} ({_first_line(error)}); using the Python loop over tasks "
                "(pass execution='loop' to choose it and silence this warning)",
                stacklevel=4,
            )
            self.execution = "loop"
        self._tried = True
        return outputs


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
