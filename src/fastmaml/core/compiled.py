"""The outer loss and its meta-gradient, by the fastest exact path for the workload.

``OuterEngine.loss(objective, ctx, tensors)`` returns the mean over tasks of ``objective``'s per-task loss
(for a shard of a larger meta-batch, their sum over that batch's task count). When a backward will follow
(grad mode on, some meta-parameter requires grad), the meta-gradient is computed right away, by the fastest
path, and the returned scalar is a :class:`MetaGradient` node whose backward hands ``grad_output *
meta_gradient`` to the meta-parameters: ``loss.backward()`` then costs nothing more, and
``outer_loss(batch).backward()`` is exactly as fast as the fastest step.

The paths, all running the same per-task objective (so they cannot drift apart):

- ``loop`` (the task mapper chose the loop): tasks one at a time, each task's graph freed by its own
  gradient right away, so the peak memory is one task's graph (as learn2learn's per-task ``backward``).
- ``vmap``: one vmapped graph over the meta-batch, differentiated once; when the device runs out of memory,
  chunks of tasks (``vmap-chunked``), each vmapped and differentiated before the next is built (the task
  mapper halves the chunk on each out-of-memory error and raises a one-line error at one task).
- ``compiled``: ``torch.compile(torch.func.grad_and_value(pure_fn))`` of a pure function of (params,
  learned state, buffers, batch tensors), mapped as the task mapper chose. Compiling takes seconds
  to tens of seconds, so ``compile="auto"`` compiles only once the eager calls of one workload have
  cost :data:`COMPILE_AFTER_S` seconds (rent-or-buy: never more than twice the better of the two
  choices made in hindsight), only on the vmap path, on the CPU only for models without convolutions
  (the CPU's per-task convolutions gain 7%, benchmarks/RESULTS.md; on a GPU, where small convolutions are
  launch-bound, the compiled Conv-4 step ran the paper's 5-way 1-shot tasks in 4.0 ms against vmap's 23.6),
  and keeps it only if it is measured faster; each decision is logged. Times are taken with the device
  synchronised, and only while the decision is open: after it, no call waits for the device.
- the plain graph: ``outer_loss(batch, graph=True)``, or batch tensors that require grad; any
  higher-order derivative works on it. The precomputed path refuses ``create_graph=True`` with an
  error naming this fix, rather than returning a wrong second derivative.

With grad mode off only the loss is computed.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Hashable
from typing import Any, Literal

import torch
from torch import Tensor

from fastmaml.core.batchnorm import exact_batch_norm
from fastmaml.core.execution import TaskMapper, has_conv, is_out_of_memory, run_loop, run_vmap
from fastmaml.core.objective import Objective, TaskContext, objective_key
from fastmaml.core.params import Params

Compile = bool | Literal["auto"]
COMPILE_AFTER_S = 10.0
_TRIALS = 5  # compiled calls timed before keeping or dropping the compiled step
log = logging.getLogger(__name__)


class MetaGradient(torch.autograd.Function):
    """A scalar ``value`` whose backward gives each leaf ``grad_output * grads[i]`` (computed ahead)."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor | None, ...], *leaves: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "this outer loss computed its meta-gradient ahead, so it has no second derivative; "
                "build it with outer_loss(batch, graph=True) to backward with create_graph=True"
            )
        return (None, None, *(None if g is None else grad_output * g for g in ctx.grads))


def _flat(objective: Objective, ctx: TaskContext) -> Callable[..., tuple[Tensor, ...]]:
    """The objective as a per-task function of flat outputs ``(loss, *aux)``, for the task mapper."""

    def per_task(*task: Tensor) -> tuple[Tensor, ...]:
        loss, aux = objective(ctx, *task)
        return (loss, *aux)

    return per_task


def _reduce(losses: Tensor, over: int | None) -> Tensor:
    """The mean of the task losses, or their sum over ``over`` (a shard of a larger meta-batch)."""
    return losses.mean() if over is None else losses.sum() / over


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


class OuterEngine:
    """Computes an algorithm's outer loss and meta-gradient (see the module docstring).

    Args:
        mapper: the algorithm's task mapper (the one vmap-or-loop decision).
        compile: ``True`` (compile from the second call), ``False``, or ``"auto"``.
        exact_bn: run under :func:`fastmaml.core.batchnorm.exact_batch_norm`.
        compile_options: keyword arguments for ``torch.compile`` (default: the C++ wrapper).
    """

    def __init__(self, mapper: TaskMapper, compile: Compile = "auto", exact_bn: bool = False,
                 compile_options: dict[str, Any] | None = None) -> None:
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile={compile!r}; use True, False or 'auto'")
        self.mapper, self.compile, self.exact_bn = mapper, compile, exact_bn
        # The C++ wrapper calls the generated kernels without Python in between: 0.57 -> 0.44 ms for
        # the sinusoid MLP's step (25 tasks), whose kernels are a few microseconds each.
        self.compile_options = compile_options if compile_options is not None else {"options": {"cpp_wrapper": True}}
        self._compiled: dict[Hashable, Callable[..., Any]] = {}
        self._eager_s: dict[Hashable, list[float]] = {}  # the last 50 eager calls' seconds
        self._eager_total: dict[Hashable, tuple[int, float]] = {}  # (calls, seconds) of all eager calls
        self._compiled_s: dict[Hashable, list[float]] = {}
        self._dropped: set[Hashable] = set()
        self._conv: bool | None = None  # whether the mapper's model has a convolution (see _eligible)
        self.failed = False  # torch.compile failed once: eager from then on
        self.last_path = ""  # the path the last call took (for tests and logs)

    # -- the public entry ------------------------------------------------------------------------------

    def loss(self, objective: Objective, ctx: TaskContext, tensors: tuple[Tensor, ...], graph: bool = False,
             denominator: int | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The mean per-task loss (with its meta-gradient attached, see the module docstring) and the aux.

        ``denominator``: divide the summed task losses by this count instead of taking their mean (a shard
        of a larger meta-batch, :meth:`fastmaml.tasks.TaskBatch.shard`: every task keeps the weight it has
        in the whole batch, so the shards' meta-gradients add up to the whole batch's).
        """
        leaves = {("params", n): p for n, p in ctx.params.items() if p.requires_grad}
        leaves.update({("learned", n): r for n, r in ctx.learned.items() if r.requires_grad})
        tasks = tensors[0].shape[0]
        over = None if denominator is None or denominator == tasks else denominator
        if tasks == 0:  # no task (a rank of a meta-batch smaller than the world): contributes 0
            zero = torch.zeros((), dtype=next(iter(ctx.params.values())).dtype, device=tensors[0].device)
            self.last_path = "empty"
            if not (torch.is_grad_enabled() and leaves):
                return zero, ()
            zeros = tuple(torch.zeros_like(t) for t in leaves.values())
            return MetaGradient.apply(zero, zeros, *leaves.values()), ()
        if not (torch.is_grad_enabled() and leaves):
            with torch.no_grad():
                losses, aux = self._map(objective, ctx, tensors)
            self.last_path = "no_grad"
            return _reduce(losses, over), aux
        if graph or any(t.requires_grad for t in tensors):
            losses, aux = self._map(objective, ctx, tensors)
            self.last_path = "graph"
            return _reduce(losses, over), aux
        value, grads, aux = self._value_and_grad(objective, ctx, tensors, leaves, over)
        return MetaGradient.apply(value, tuple(grads.get(k) for k in leaves), *leaves.values()), aux

    # -- the paths -------------------------------------------------------------------------------------

    def _map(self, objective: Objective, ctx: TaskContext, tensors: tuple[Tensor, ...], retry: bool = True):
        with exact_batch_norm(self.exact_bn):
            losses, *aux = self.mapper(_flat(objective, ctx), *tensors, retry=retry)
        return losses, tuple(aux)

    def _value_and_grad(self, objective, ctx, tensors, leaves, over: int | None):
        execution = self.mapper.resolve(*tensors)
        device = tensors[0].device
        key = self._key(objective, ctx, tensors, execution, over)
        if key is not None and self._use_compiled(key, execution, device):
            timed = self._compiled_s.setdefault(key, [])
            trial = len(timed) <= _TRIALS  # the compiling call and the trials are timed; nothing after
            start = _clock(device, trial)
            result = self._run_compiled(key, objective, ctx, tensors, over)
            if result is not None:
                if trial:
                    timed.append(_clock(device, True) - start)
                    self._judge(key)
                self.last_path = "compiled"
                return result
        # Eager calls are timed (with the device synchronised) only while compile="auto" may still use them.
        timing = key is not None and self._undecided(key, execution, device)
        start = _clock(device, timing)
        while True:
            try:
                result = self._eager(objective, ctx, tensors, leaves, over, execution)
                break
            except Exception as error:  # noqa: BLE001 - only the device's out-of-memory error is handled
                if not is_out_of_memory(error):
                    raise
                self.mapper.shrink(tensors[0].shape[0], error)  # raises OutOfMemory at one task at a time
        if key is not None:
            calls, total = self._eager_total.get(key, (0, 0.0))
            elapsed = _clock(device, True) - start if timing else 0.0
            self._eager_total[key] = (calls + 1, total + elapsed)
            if timing:
                recent = self._eager_s.setdefault(key, [])
                recent.append(elapsed)
                del recent[:-50]
        return result

    def _eager(self, objective, ctx, tensors, leaves, over: int | None, execution: str):
        tasks = tensors[0].shape[0]
        if execution == "loop":
            return self._loop(objective, ctx, tensors, leaves, over)
        if self.mapper.chunk is not None and self.mapper.chunk < tasks:
            return self._chunked(objective, ctx, tensors, leaves, over, self.mapper.chunk)
        losses, aux = self._map(objective, ctx, tensors, retry=False)
        value = _reduce(losses, over)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        self.last_path = "vmap" if self.mapper.execution == "vmap" else "loop-graph"
        return value.detach(), dict(zip(leaves, grads)), tuple(a.detach() for a in aux)

    def _loop(self, objective, ctx, tensors, leaves, over: int | None):
        tasks, names, inputs = tensors[0].shape[0], list(leaves), list(leaves.values())
        count = over if over is not None else tasks
        total: dict[Any, Tensor] = {}
        value, aux_rows = torch.zeros((), device=tensors[0].device), []
        with exact_batch_norm(self.exact_bn):
            for i in range(tasks):
                loss, aux = objective(ctx, *(t[i] for t in tensors))
                # d(mean)/d(loss_i) = 1/count; this task's graph is freed here, before the next is built.
                _accumulate(total, names, torch.autograd.grad(loss / count, inputs, allow_unused=True))
                value = value + loss.detach()
                aux_rows.append(tuple(a.detach() for a in aux))
        aux = tuple(torch.stack(column) for column in zip(*aux_rows))
        self.last_path = "loop"
        return value / count, total, aux

    def _chunked(self, objective, ctx, tensors, leaves, over: int | None, size: int):
        """The vmap path over ``size`` tasks at a time, each chunk's graph freed by its own gradient."""
        tasks, names, inputs = tensors[0].shape[0], list(leaves), list(leaves.values())
        count = over if over is not None else tasks
        total: dict[Any, Tensor] = {}
        value, aux_parts = torch.zeros((), device=tensors[0].device), []
        per_task = _flat(objective, ctx)
        with exact_batch_norm(self.exact_bn):
            for start in range(0, tasks, size):
                losses, *aux = run_vmap(per_task, *(t[start:start + size] for t in tensors))  # (size,)
                _accumulate(total, names, torch.autograd.grad(losses.sum() / count, inputs, allow_unused=True))
                value = value + losses.detach().sum()
                aux_parts.append(tuple(a.detach() for a in aux))
        self.last_path = "vmap-chunked"
        return value / count, total, tuple(torch.cat(column) for column in zip(*aux_parts))

    # -- compilation -----------------------------------------------------------------------------------

    def _key(self, objective, ctx, tensors, execution, over: int | None) -> Hashable | None:
        which = objective_key(objective)
        if which is None or self.compile is False or self.failed:
            return None
        shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        return (which, ctx.spec, ctx.steps, execution, shapes, over)

    def _eligible(self, execution: str, device: torch.device) -> bool:
        """Whether ``compile="auto"`` considers this workload: the vmap path, and on the CPU no convolution
        (the CPU's per-task convolutions gain 7%; on a GPU the compiled Conv-4 step is several times faster)."""
        model = self.mapper.model
        if execution != "vmap" or model is None:
            return False
        if self._conv is None:  # the module is fixed: inspected once, not on every call
            self._conv = has_conv(model)
        return device.type != "cpu" or not self._conv

    def _undecided(self, key, execution: str, device: torch.device) -> bool:
        """Whether ``compile="auto"`` may still compile ``key`` (so its eager calls are timed)."""
        return (self.compile == "auto" and key not in self._compiled and key not in self._dropped
                and self._eligible(execution, device))

    def _use_compiled(self, key, execution: str, device: torch.device) -> bool:
        if key in self._compiled:
            return True
        if key in self._dropped:
            return False
        calls, total = self._eager_total.get(key, (0, 0.0))
        if self.compile is True:
            return calls >= 1  # the first call runs eagerly: it settles the task mapper
        if not self._eligible(execution, device):
            return False
        if not calls or total < COMPILE_AFTER_S:
            return False
        log.info("compile=auto: compiling the outer step after %d eager calls (%.1f s, %.2f ms each)",
                 calls, total, 1e3 * statistics.median(self._eager_s[key]))
        return True

    def _judge(self, key) -> None:
        """Under ``compile="auto"``, drop a compiled step that is not faster than the eager one."""
        timed = self._compiled_s[key][1:]  # the first call compiles
        if self.compile != "auto" or len(timed) != _TRIALS:
            return
        compiled, eager = statistics.median(timed), statistics.median(self._eager_s[key])
        if compiled >= eager:
            del self._compiled[key]
            self._dropped.add(key)
        log.info("compile=auto: compiled step %.3f ms against eager %.3f ms: %s", 1e3 * compiled, 1e3 * eager,
                 "dropped, eager from now on" if compiled >= eager else "kept")

    def _run_compiled(self, key, objective, ctx: TaskContext, tensors, over: int | None):
        try:
            if key not in self._compiled:
                self._compiled[key] = self._build(objective, ctx, over)
            (grads, learned_grads), (value, aux) = self._compiled[key](
                {n: p.detach() for n, p in ctx.params.items()},
                {n: r.detach() for n, r in ctx.learned.items()},
                ctx.buffers,
                *tensors,
            )
        except Exception as error:  # noqa: BLE001 - any compile failure means: run eagerly instead
            self._compiled.pop(key, None)
            if is_out_of_memory(error):  # the eager path can run the tasks in chunks; this workload stays eager
                self._dropped.add(key)
                log.warning("the compiled outer step of %s ran out of device memory; running it eagerly",
                            self.mapper.owner)
                return None
            self.failed = True
            warnings.warn(
                f"torch.compile failed for {self.mapper.owner} ({type(error).__name__}: {_first_line(error)}); "
                "running the outer step eagerly from now on (pass compile=False to choose that and silence this)",
                stacklevel=4,
            )
            return None
        out = {("params", n): g for n, g in grads.items() if ctx.params[n].requires_grad}
        out.update({("learned", n): g for n, g in learned_grads.items() if ctx.learned[n].requires_grad})
        return value.detach(), out, aux

    def _build(self, objective, ctx: TaskContext, over: int | None):
        run = run_vmap if self.mapper.execution == "vmap" else run_loop
        exact_bn = self.exact_bn

        def pure_fn(params: Params, learned: Params, buffers: Params, *tensors: Tensor):
            per_task = _flat(objective, ctx._replace(params=params, learned=learned, buffers=buffers))
            with exact_batch_norm(exact_bn):
                losses, *aux = run(per_task, *tensors)  # (tasks,)
            return _reduce(losses, over), tuple(a.detach() for a in aux)

        _quiet_cuda_home()
        return torch.compile(torch.func.grad_and_value(pure_fn, argnums=(0, 1), has_aux=True), **self.compile_options)


def _clock(device: torch.device, sync: bool) -> float:
    """``perf_counter``, after the device's queued work when ``sync`` (a GPU's calls return before the work)."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _accumulate(total: dict[Any, Tensor], names: list, grads: tuple[Tensor | None, ...]) -> None:
    for name, g in zip(names, grads):
        if g is not None:
            total[name] = total[name] + g if name in total else g


class _NoCudaHome(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." on machines without a GPU, where the
    CPU compiler's toolchain lookup prints it and it means nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _quiet_cuda_home() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaHome) for f in logger.filters):
        logger.addFilter(_NoCudaHome())
