"""Outer steps: one call computes the mean query loss and writes the meta-gradient into ``.grad``.

``step = outer_step(maml); loss = step(batch)`` leaves in ``p.grad`` (accumulated, as ``backward`` does)
for every ``p`` in ``maml.parameters()`` what ``maml.outer_loss(batch).backward()`` leaves, by the
fastest path measured for the workload (benchmarks/RESULTS.md):

- ``"loop"``: tasks one at a time, each task's graph freed by its own backward right away, so the peak
  memory is one task's graph (as learn2learn's per-task ``backward``) instead of the meta-batch's.
- ``"outer_loss"``: ``maml.outer_loss(batch).backward()``, one graph over the meta-batch, mapped as
  ``maml``'s ``execution`` says (vmap or loop); the only path for algorithms that override the loss.
- ``"compiled"`` (:class:`CompiledOuterStep`): ``torch.compile(torch.func.grad_and_value(pure_fn))``
  of a pure function of (params, rule state, buffers, batch tensors).

All run :func:`fastmaml.core.inner.task_loss`, the one per-task function.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from torch import Tensor

from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm
from fastmaml.core.execution import has_conv, run_loop, run_vmap
from fastmaml.core.params import Params
from fastmaml.tasks.batch import TaskBatch

StepExecution = Literal["auto", "loop", "outer_loss", "compiled"]
STEP_EXECUTIONS = ("auto", "loop", "outer_loss", "compiled")


def plain_outer_loss(maml) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``maml``'s outer loss is MAML's mean of ``task_loss`` (not overridden by a subclass)."""
    return all(getattr(type(maml), name).__qualname__ == f"MAML.{name}" for name in ("outer_loss", "task_losses"))


def _accumulate(tensors: list[Tensor], grads: tuple[Tensor | None, ...]) -> None:
    """``t.grad += g`` the way ``backward`` does it (a fresh tensor where ``.grad`` is None)."""
    for t, g in zip(tensors, grads):
        if g is None:
            continue
        if t.grad is None:
            t.grad = g.detach().clone() if g.data_ptr() == t.data_ptr() else g.detach()
        else:
            t.grad += g


class OuterStep:
    """One meta-iteration's forward and backward for a :class:`fastmaml.MAML`.

    Args:
        maml: the meta-learner; its parameters receive the gradient.
        execution: ``"loop"`` (tasks one at a time, each graph freed by its own backward: the peak
            memory is one task's graph) or ``"outer_loss"`` (``maml.outer_loss(batch).backward()``).

    Example:
        >>> step = OuterStep(maml, "loop")
        >>> loss = step(batch)   # maml's parameters now hold the meta-gradient in .grad
        >>> optimizer.step()
    """

    def __init__(self, maml, execution: Literal["loop", "outer_loss"] = "loop") -> None:  # type: ignore[no-untyped-def]
        if execution not in ("loop", "outer_loss"):
            raise ValueError(f"execution={execution!r}; OuterStep runs 'loop' or 'outer_loss' (outer_step: the rest)")
        if execution == "loop" and not plain_outer_loss(maml):
            raise ValueError(f"{type(maml).__name__} overrides the outer loss; use execution='outer_loss'")
        self.maml = maml
        self.execution = execution

    def __call__(self, batch: TaskBatch) -> Tensor:
        """Mean query loss (detached); the meta-gradient is accumulated into the parameters' ``.grad``."""
        if self.execution == "outer_loss":
            loss = self.maml.outer_loss(batch)
            loss.backward()
            return loss.detach()
        maml = self.maml
        params, buffers, rule_state = maml.functional_state()
        maml._check_model_accepts(batch, params, buffers)
        leaves = [t for t in (*params.values(), *rule_state.values()) if t.requires_grad]
        per_task = functools.partial(inner.task_loss, maml.spec(), params, buffers, rule_state,
                                     steps=maml.inner_steps)
        tasks, total = len(batch), torch.zeros(())
        with exact_batch_norm(maml.exact_bn):
            for i in range(tasks):
                loss, _ = per_task(*(t[i] for t in batch.tensors()))
                # d(mean)/d(loss_i) = 1/tasks; this task's graph is freed here, before the next is built.
                _accumulate(leaves, torch.autograd.grad(loss / tasks, leaves, allow_unused=True))
                total = total + loss.detach()
        return total / tasks


class CompiledOuterStep:
    """``torch.compile(torch.func.grad_and_value(pure_fn))`` of the outer loss, gradients into ``.grad``.

    ``pure_fn(params, rule_state, buffers, *batch tensors)`` is the mean of
    :func:`fastmaml.core.inner.task_loss` over tasks, mapped the way ``maml``'s execution resolved: the
    first call runs eagerly (``maml.outer_loss(batch).backward()``), which settles ``execution="auto"``,
    and later calls run compiled (compilation happens on the second call and takes tens of seconds).
    ``compile_kwargs`` go to ``torch.compile`` (default: ``options={"cpp_wrapper": True}``).
    If compilation fails (no C++ compiler, an op dynamo cannot trace) it warns once and stays eager.

    Example:
        >>> step = CompiledOuterStep(maml)
        >>> for batch in batches:
        ...     optimizer.zero_grad(); loss = step(batch); optimizer.step()
    """

    def __init__(self, maml, **compile_kwargs) -> None:  # type: ignore[no-untyped-def]
        self.maml = maml
        # The C++ wrapper calls the generated kernels without Python in between: 0.57 -> 0.44 ms for
        # the sinusoid MLP's step (25 tasks), whose kernels are a few microseconds each.
        compile_kwargs.setdefault("options", {"cpp_wrapper": True})
        self.compile_kwargs = compile_kwargs
        self._compiled = None
        if not plain_outer_loss(maml):
            raise ValueError(f"{type(maml).__name__} overrides the outer loss; use OuterStep(maml, 'outer_loss')")
        self._eager = OuterStep(maml, "outer_loss")
        self.execution = "compiled"

    def _build(self):  # type: ignore[no-untyped-def]
        maml = self.maml
        spec, steps, exact_bn = maml.spec(), maml.inner_steps, maml.exact_bn
        run = run_vmap if maml.mapper.execution == "vmap" else run_loop

        def pure_fn(params: Params, rule_state: Params, buffers: Params, *tensors: Tensor) -> Tensor:
            per_task = functools.partial(inner.task_loss, spec, params, buffers, rule_state, steps=steps)
            with exact_batch_norm(exact_bn):
                losses, _ = run(per_task, *tensors)  # (tasks,)
            return losses.mean()

        return torch.compile(torch.func.grad_and_value(pure_fn, argnums=(0, 1)), **self.compile_kwargs)

    def __call__(self, batch: TaskBatch) -> Tensor:
        """Mean query loss (detached); the meta-gradient is accumulated into the parameters' ``.grad``."""
        if self.execution == "eager" or self.maml.mapper.execution == "auto":
            return self._eager(batch)
        params, buffers, rule_state = self.maml.functional_state()
        try:
            if self._compiled is None:
                self._compiled = self._build()
            (grads, rule_grads), loss = self._compiled(
                {n: p.detach() for n, p in params.items()},
                {n: r.detach() for n, r in rule_state.items()},
                buffers,
                *batch.tensors(),
            )
        except Exception as error:  # noqa: BLE001 - any compile failure means: run eagerly instead
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            warnings.warn(
                f"torch.compile failed for {type(self.maml.model).__name__} ({type(error).__name__}: {first}); "
                "running the outer step eagerly from now on (use OuterStep to choose that and silence this)",
                stacklevel=2,
            )
            self.execution = "eager"
            return self._eager(batch)
        _accumulate([params[n] for n in grads], tuple(grads.values()))
        _accumulate([rule_state[n] for n in rule_grads], tuple(rule_grads.values()))
        return loss.detach()


def outer_step(maml, execution: StepExecution = "auto") -> OuterStep | CompiledOuterStep:  # type: ignore[no-untyped-def]
    """The outer step for ``maml``: ``"auto"`` is the loop for convolutional models and the compiled
    step otherwise (the fastest measured on each; benchmarks/RESULTS.md), and ``outer_loss`` for
    algorithms that override the outer loss.

    Example:
        >>> step = outer_step(maml)
        >>> loss = step(batch)
    """
    if execution not in STEP_EXECUTIONS:
        raise ValueError(f"execution={execution!r} is not one of {STEP_EXECUTIONS}; pick one of them")
    if execution == "auto":
        if not plain_outer_loss(maml):
            execution = "outer_loss"
        else:
            execution = "loop" if has_conv(maml.model) else "compiled"
    if execution == "compiled":
        return CompiledOuterStep(maml)
    return OuterStep(maml, execution)
