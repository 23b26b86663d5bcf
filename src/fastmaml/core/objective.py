"""Outer objectives: what one task contributes to the outer loss, composed with any inner loop.

An objective is a callable ``objective(ctx, *task_tensors) -> (loss, aux)`` on ONE task: ``ctx`` is the
:class:`TaskContext` (the inner-loop spec, the meta-parameters, buffers, the rule's learned state and
the number of inner steps), ``task_tensors`` that task's slice of the meta-batch (for a
:class:`fastmaml.TaskBatch`: support_x, support_y, query_x, query_y; other task families pass their
own tensors, e.g. sampled trajectories). ``loss`` is a scalar whose gradient with respect to
``ctx.params`` and ``ctx.learned`` is the task's meta-gradient; the outer loss is its mean over tasks.
``aux`` is a tuple of tensors the algorithm wants back (stacked over tasks, never differentiated).

Objectives whose meta-gradient is not the gradient of a loss (Reptile's theta - phi, iMAML's implicit
gradient) return :func:`surrogate`: a real loss value whose gradient is the meta-gradient they computed.

Two optional attributes: ``key``, a hashable that identifies the computation for the compiled outer
step (``None``: never compile it, e.g. when it changes every iteration), and ``finish(aux)``, called
with the stacked ``aux`` after the meta-batch (MAML++ folds batch-norm statistics there).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from fastmaml.core import inner
from fastmaml.core.params import Params


class TaskContext(NamedTuple):
    """What every task of a meta-batch shares: the inner loop and the meta-parameters.

    An algorithm builds it with ``algorithm.context(steps)``; an :class:`Objective` reads it.

    Example:
        >>> from fastmaml.core import InnerSpec, default_loss, module_state, sgd
        >>> model = torch.nn.Linear(1, 1)
        >>> params, buffers = module_state(model)
        >>> spec = InnerSpec(model, default_loss, sgd(0.1), tuple(params), first_order=False)
        >>> ctx = TaskContext(spec, params, buffers, learned={}, steps=1)
        >>> x, y = torch.ones(4, 1), torch.zeros(4, 1)
        >>> loss, aux = QueryLoss()(ctx, x, y, x, y)  # one task: support_x, support_y, query_x, query_y
        >>> loss.shape, aux
        (torch.Size([]), ())
    """

    spec: inner.InnerSpec
    params: Params
    buffers: Params
    learned: Params
    steps: int


class Objective(Protocol):
    """``objective(ctx, *task) -> (loss, aux)`` on one task (the module docstring has the contract).

    Example:
        >>> from fastmaml.core import adapt
        >>> def l1_query_loss(ctx, support_x, support_y, query_x, query_y):  # MAML scored by the L1 error
        ...     params = adapt(ctx.spec, ctx.params, ctx.buffers, ctx.learned, support_x, support_y, ctx.steps)
        ...     prediction = torch.func.functional_call(ctx.spec.model, (params, ctx.buffers), (query_x,))
        ...     return (prediction - query_y).abs().mean(), ()
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]))
        >>> maml.objective = l1_query_loss
        >>> maml.outer_loss(fm.Sinusoid().sample_tasks(4, torch.Generator().manual_seed(0))).backward()
    """

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]: ...


def objective_key(objective: Objective) -> Hashable | None:
    return getattr(objective, "key", None)


def surrogate(value: Tensor, params: Params, meta_grads: Params) -> Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params[name]`` is exactly ``meta_grads[name]``.

    ``value + sum((theta - stopgrad(theta)) * g)``: the second term is zero in value and has gradient
    ``g``, so ``.backward()`` leaves the precomputed meta-gradient in ``.grad`` while the logged number
    stays a real loss.

    Example:
        >>> theta = torch.ones(2, requires_grad=True)
        >>> surrogate(torch.tensor(3.0), {"w": theta}, {"w": torch.tensor([1.0, -1.0])}).backward()
        >>> theta.grad
        tensor([ 1., -1.])
    """
    terms = [((p - p.detach()) * meta_grads[name].detach()).sum() for name, p in params.items() if name in meta_grads]
    return value.detach() + torch.stack(terms).sum()


@dataclass(frozen=True)
class QueryLoss:
    """MAML's objective (eq. 2/3): the query loss after adaptation.

    Args:
        step_weights: MAML++'s multi-step loss: weights of the query losses after steps 1..steps
            (``None``: the final one only).
        track: run the query forward after every step even without ``step_weights`` (MAML++ records
            batch statistics there); the loss is still the final one.

    Example:
        >>> objective = QueryLoss()
    """

    step_weights: tuple[float, ...] | None = None
    track: bool = False

    @property
    def key(self) -> Hashable | None:
        # Annealed weights change every iteration: compiling them in would recompile every iteration.
        return ("query", self.track) if self.step_weights is None else None

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        support_x, support_y, query_x, query_y = task
        track = self.track or self.step_weights is not None
        losses, _ = inner.task_loss(ctx.spec, ctx.params, ctx.buffers, ctx.learned, support_x, support_y,
                                    query_x, query_y, steps=ctx.steps, track=track)
        if not track:
            return losses, ()
        if self.step_weights is None:
            return losses[-1], ()
        # losses: (steps + 1,); index 0 is before adaptation and carries no weight
        weights = torch.tensor(self.step_weights, dtype=losses.dtype, device=losses.device)
        return losses[1:] @ weights, ()
