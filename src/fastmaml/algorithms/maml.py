"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine 2017, arXiv:1703.03400).

The inner loop adapts a copy of the parameters to each task's support set (eq. 1); the outer loss is
the mean query loss of the adapted parameters over the meta-batch (eq. 2/3). Nothing here mutates the
module: parameters travel as dicts through ``torch.func.functional_call``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm, has_batch_norm
from fastmaml.core.execution import Execution, TaskMapper
from fastmaml.core.params import Params, Selector, module_state, select
from fastmaml.core.rules import UpdateRule, sgd
from fastmaml.tasks.batch import TaskBatch


def _key(name: str) -> str:
    # nn.ParameterDict keys may not contain dots.
    return name.replace(".", "/")


class MAML(nn.Module):
    """Meta-learns the initialisation of ``model``; itself a module holding the model and any learned
    inner-rule state, so ``maml.parameters()`` is everything the outer optimizer updates.

    Args:
        model: any ``nn.Module``; its buffers travel beside the parameters, never mutated.
        inner_lr: the inner step size alpha (the initial value for learned-rate rules).
        inner_steps: inner gradient steps per task during meta-training.
        first_order: drop second-order terms (FOMAML).
        loss_fn: ``loss_fn(prediction, target) -> scalar``; by default cross-entropy for integer
            targets and mean squared error otherwise.
        adapt: which parameters adapt in the inner loop (names, prefixes or a predicate); the others
            stay fixed there but still receive outer gradients. Default: all.
        rule: the inner update rule; default ``sgd(inner_lr)``.
        execution: ``"vmap"``, ``"loop"``, or ``"auto"`` (vmap, falling back to the loop once, with a
            warning, for modules vmap cannot run).

    Example:
        >>> import torch.nn.functional as F, fastmaml as fm
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, loss_fn=F.mse_loss)
        >>> batch = fm.Sinusoid().sample_tasks(25, torch.Generator().manual_seed(0))
        >>> maml.outer_loss(batch).backward()
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        adapt: Selector = None,
        rule: UpdateRule | None = None,
        execution: Execution = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is a {type(model).__name__}; pass a torch.nn.Module")
        if not isinstance(inner_lr, numbers.Real) or inner_lr < 0:
            raise ValueError(f"inner_lr={inner_lr!r}; the inner step size must be a number >= 0")
        self.inner_steps = _check_steps(inner_steps)
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        self.model = model
        params, _ = module_state(model)
        self.adapt_names = select(params, adapt)
        self.rule = rule if rule is not None else sgd(self.inner_lr)
        state = self.rule.init({name: params[name] for name in self.adapt_names})
        self.rule_state = nn.ParameterDict({_key(n): nn.Parameter(t) for n, t in state.items()})
        self.loss_fn = loss_fn if loss_fn is not None else inner.default_loss
        self.mapper = TaskMapper(execution, owner=type(model).__name__, model=model)
        self.exact_bn = has_batch_norm(model)
        self._checked_shapes: set[tuple] = set()

    # -- the functional state ------------------------------------------------------------------------

    def spec(self) -> inner.InnerSpec:
        return inner.InnerSpec(self.model, self.loss_fn, self.rule, self.adapt_names, self.first_order)

    def functional_state(self) -> tuple[Params, Params, Params]:
        """The live parameters, a private copy of the buffers, and the inner rule's learned state."""
        params, buffers = module_state(self.model)
        rule_state = {name: self.rule_state[_key(name)] for name in self.adapt_names if _key(name) in self.rule_state}
        return params, {name: b.clone() for name, b in buffers.items()}, rule_state

    # -- the outer loop --------------------------------------------------------------------------------

    def task_losses(
        self,
        batch: TaskBatch,
        inner_steps: int | None = None,
        track: bool = False,
        state: tuple[Params, Params, Params] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-task query losses after adaptation, and the query predictions.

        Returns:
            losses of shape (tasks,), or (tasks, steps + 1) with ``track=True`` (before adaptation and
            after each step); predictions of shape (tasks, query, *outputs), or
            (tasks, steps + 1, query, *outputs) with ``track=True``.
        """
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"expected a fastmaml.TaskBatch, got {type(batch).__name__}; wrap the tensors in TaskBatch")
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        params, buffers, rule_state = state if state is not None else self.functional_state()
        self._check_model_accepts(batch, params, buffers)
        per_task = self.task_function(params, buffers, rule_state, steps, track)
        with exact_batch_norm(self.exact_bn):
            return self.mapper(per_task, *batch.tensors())

    def task_function(
        self, params: Params, buffers: Params, rule_state: Params, steps: int, track: bool
    ) -> Callable[..., tuple[Tensor, ...]]:
        """The per-task function mapped over the meta-batch: ``(support_x, support_y, query_x, query_y)``
        of one task to its query loss and predictions (subclasses may wrap it, never replace it)."""
        return functools.partial(inner.task_loss, self.spec(), params, buffers, rule_state, steps=steps, track=track)

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None) -> Tensor:
        """Mean query loss over the meta-batch after adaptation; ``.backward()`` gives the meta-gradient."""
        losses, _ = self.task_losses(batch, inner_steps)
        return losses.mean()

    def begin_iteration(self, iteration: int, iterations: int) -> None:
        """Called by the trainer before outer step ``iteration`` of ``iterations``; MAML has no schedule."""

    def scheduler(
        self, optimizer: torch.optim.Optimizer, iterations: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The outer learning-rate schedule this algorithm prescribes (stepped once per outer step), if any."""
        return None

    # -- one task --------------------------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor, inner_steps: int | None = None) -> Params:
        """Adapted parameters (a dict of every parameter) for one task's support set (no task dimension)."""
        if support_x.shape[:1] != support_y.shape[:1]:
            raise ValueError(
                f"support_x has {support_x.shape[0]} examples but support_y has {support_y.shape[0]}; "
                "give one target per example (and no task dimension for a single task)"
            )
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        params, buffers, rule_state = self.functional_state()
        with exact_batch_norm(self.exact_bn):
            return inner.adapt(self.spec(), params, buffers, rule_state, support_x, support_y, steps)

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """The model evaluated on ``x`` with the given (e.g. adapted) parameters."""
        _, buffers = module_state(self.model)
        with exact_batch_norm(self.exact_bn):
            return inner.forward(self.spec(), params, {n: b.clone() for n, b in buffers.items()}, x)

    def _check_model_accepts(self, batch: TaskBatch, params: Params, buffers: Params) -> None:
        """Turn a shape mismatch between data and model into a one-line error, once per input shape."""
        signature = (tuple(batch.support_x.shape[2:]), batch.support_x.dtype)
        if signature in self._checked_shapes:
            return
        try:
            with torch.no_grad(), exact_batch_norm(self.exact_bn):
                inner.forward(self.spec(), params, buffers, batch.support_x[0, :2])
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                f"{type(self.model).__name__} cannot take inputs of shape {tuple(batch.support_x.shape[2:])} "
                f"({first}); make the data match the model (image size, channels, feature count, dtype)"
            ) from None
        self._checked_shapes.add(signature)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"inner_steps={steps!r}; it must be an integer >= 0")
    return int(steps)
