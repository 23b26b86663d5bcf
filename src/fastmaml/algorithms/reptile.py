"""Reptile: On First-Order Meta-Learning Algorithms (Nichol, Achiam, Schulman 2018, arXiv:1803.02999).

Each task trains a copy of theta for ``inner_steps`` of gradient descent to phi_i; the outer update moves
theta towards the mean, theta <- theta + epsilon (mean_i phi_i - theta) (Algorithm 2, the batched
version). Here the outer "gradient" theta - mean_i phi_i is handed to any torch optimizer through a
surrogate loss (:func:`fastmaml.core.objective.surrogate`): with plain SGD at learning rate epsilon that
is exactly Algorithm 2.

Departures from the paper: inner steps are full-batch gradient descent with ``inner_lr`` (the paper uses
Adam on minibatches; ``rule=fastmaml.core.rules.adam(...)`` gives that), and by default the inner loop
trains on the whole task, support and query concatenated (the paper has no query split during
meta-training; ``use_query=False`` trains on the support set only). Evaluation (:meth:`task_losses`)
adapts on the support set and scores the query set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import KW_ONLY
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, FirstOrderOptions
from fastmaml.core import inner
from fastmaml.core.objective import TaskContext, surrogate
from fastmaml.core.params import detached


@dataclasses.dataclass(frozen=True)
class ReptileObjective:
    """Per task: the query loss of phi (to log), with gradient theta - phi (the Reptile direction)."""

    use_query: bool = True

    @property
    def key(self) -> Hashable:
        return ("reptile", self.use_query)

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        support_x, support_y, query_x, query_y = task
        x, y = support_x, support_y
        if self.use_query:  # (support + query, *features)
            x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        # No graph through the inner loop: the meta-gradient is computed here (and grad mode off makes
        # the vmapped inner loop 3-4x cheaper; the core's torch.func.grad ignores an outer no_grad).
        with torch.no_grad():
            start = detached(ctx.params)
            phi = inner.adapt(ctx.spec, start, ctx.buffers, ctx.learned, x, y, ctx.steps)
            loss = inner.loss_of(ctx.spec, phi, ctx.buffers, query_x, query_y)
        return surrogate(loss, ctx.params, {n: start[n] - phi[n] for n in ctx.params}), ()


@dataclasses.dataclass(frozen=True)
class ReptileOptions(FirstOrderOptions):
    inner_steps: int = 5
    _: KW_ONLY
    use_query: bool = True


class Reptile(MAML):
    """First-order meta-learning by moving the initialisation towards task-adapted weights.

    Options: ``use_query``, train the inner loop on support and query together (default) or support
    only; the others as :class:`MAML` (the inner loop is always first-order).

    ``outer_loss`` returns the mean query loss of the adapted weights (a number to log), built so that
    its gradient w.r.t. each parameter is exactly ``theta - mean_i phi_i``.

    Example:
        >>> import torch, fastmaml as fm
        >>> reptile = Reptile(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=5)
        >>> reptile.outer_loss(fm.Sinusoid().sample_tasks(5, torch.Generator().manual_seed(0))).backward()
    """

    Options = ReptileOptions
    options: ReptileOptions

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.use_query = bool(self.options.use_query)
        self.objective = ReptileObjective(self.use_query)
