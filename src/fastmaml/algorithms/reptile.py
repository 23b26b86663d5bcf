"""Reptile: On First-Order Meta-Learning Algorithms (Nichol, Achiam, Schulman 2018, arXiv:1803.02999).

Each task trains a copy of theta for ``inner_steps`` of gradient descent to phi_i; the outer update moves
theta towards the mean, theta <- theta + epsilon (mean_i phi_i - theta) (Algorithm 2, the batched
version). Here the outer "gradient" theta - mean_i phi_i is handed to any torch optimizer through a
surrogate loss: with plain SGD at learning rate epsilon that is exactly Algorithm 2.

Departures from the paper: inner steps are full-batch gradient descent with ``inner_lr`` (the paper uses
Adam on minibatches), and by default the inner loop trains on the whole task, support and query
concatenated (the paper has no query split during meta-training; ``use_query=False`` trains on the
support set only). Evaluation (:meth:`task_losses`) adapts on the support set and scores the query set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, _check_steps
from fastmaml.algorithms.surrogate import surrogate_loss
from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm
from fastmaml.core.execution import Execution
from fastmaml.core.params import detached
from fastmaml.tasks.batch import TaskBatch


class Reptile(MAML):
    """First-order meta-learning by moving the initialisation towards task-adapted weights.

    Args:
        use_query: train the inner loop on support and query together (default) or support only.
        Other arguments: as :class:`MAML` (the inner loop is always first-order).

    ``outer_loss`` returns the mean query loss of the adapted weights (a number to log), built so that
    its gradient w.r.t. each parameter is exactly ``theta - mean_i phi_i``.

    Example:
        >>> import torch, fastmaml as fm
        >>> reptile = Reptile(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=5)
        >>> reptile.outer_loss(fm.Sinusoid().sample_tasks(5, torch.Generator().manual_seed(0))).backward()
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        use_query: bool = True,
        execution: Execution = "auto",
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, True, loss_fn, execution=execution)
        self.use_query = bool(use_query)

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None) -> Tensor:
        """Surrogate whose ``.backward()`` leaves theta - mean_i phi_i in every parameter's ``.grad``."""
        if not isinstance(batch, TaskBatch):
            raise TypeError(
                f"expected a fastmaml.TaskBatch, got {type(batch).__name__}; wrap the tensors in TaskBatch"
            )
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        params, buffers, rule_state = self.functional_state()
        self._check_model_accepts(batch, params, buffers)
        spec, start, names = self.spec(), detached(params), tuple(params)

        def per_task(
            support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
        ) -> tuple[Tensor, ...]:
            x, y = support_x, support_y
            if self.use_query:  # (support + query, *features)
                x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
            adapted = inner.adapt(spec, start, buffers, rule_state, x, y, steps)
            return (inner.loss_of(spec, adapted, buffers, query_x, query_y), *(adapted[n] for n in names))

        # No outer graph at all: the meta-gradient is computed here, not by backpropagation.
        with torch.no_grad(), exact_batch_norm(self.exact_bn):
            losses, *adapted = self.mapper(per_task, *batch.tensors())  # adapted[k]: (tasks, *shape)
        meta_grads = {n: start[n] - phi.mean(0) for n, phi in zip(names, adapted)}
        return surrogate_loss(losses.mean(), params, meta_grads)
