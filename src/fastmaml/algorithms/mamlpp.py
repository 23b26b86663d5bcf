"""MAML++: How to train your MAML (Antoniou, Edwards, Storkey 2018, arXiv:1810.09502).

Each fix of section 4 is a switch; with all of them off this is MAML exactly.

- ``multi_step_loss`` (MSL): the outer loss weighs the query loss after every inner step; the weights
  start uniform and anneal towards the final step over the first ``multi_step_loss_fraction`` of
  training, after which only the final step counts (reference ``get_per_step_loss_importance_vector``).
- ``first_order_fraction`` (DA, derivative-order annealing): first-order for that fraction of training.
- ``learned_lr`` (LSLR): one learned inner rate per parameter tensor and per step (``rules.per_step``).
- ``per_step_bn_weights`` / ``per_step_bn_statistics`` (BNWB / BNRS): see :mod:`.per_step_bn`.
- ``cosine_annealing`` (CA): :meth:`scheduler` gives a cosine schedule of the outer learning rate.

The schedules follow the trainer's :meth:`begin_iteration` calls (iterations replace the paper's epochs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, _check_steps
from fastmaml.algorithms.per_step_bn import PerStepNorm, batch_norms
from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm
from fastmaml.core.execution import Execution
from fastmaml.core.params import Params
from fastmaml.core.rules import per_step
from fastmaml.tasks.batch import TaskBatch


def msl_weights(steps: int, progress: float) -> list[float]:
    """MSL weights of the query losses after steps 1..steps at ``progress`` in [0, 1] of the annealing."""
    decay, floor = progress / steps, 0.03 / steps
    weights = [max(1.0 / steps - decay, floor)] * (steps - 1)
    return [*weights, min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)]


def _switch(value: bool | None, available: bool, option: str, needs: str) -> bool:
    if value and not available:
        raise ValueError(f"{option}=True but the model has no {needs}; set {option}=False")
    return available if value is None else bool(value)


def _fraction(value: float, option: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{option}={value!r}; give a fraction of training between 0 and 1")
    return float(value)


class MAMLPlusPlus(MAML):
    """MAML with the MAML++ fixes, each switchable.

    Args:
        multi_step_loss, multi_step_loss_fraction, first_order_fraction, learned_lr, cosine_annealing:
            see the module docstring. ``first_order=True`` keeps first order for the whole run.
        per_step_bn_weights, per_step_bn_statistics: ``None`` (default) turns each on where the model
            has the BatchNorm layers it needs (affine / tracking running statistics).
        min_outer_lr: the floor of the cosine schedule.
        Other arguments: as :class:`MAML`.

    With per-step BatchNorm weights on, the model's own BatchNorm weights are unused (they get no
    gradient); the learned ones are ``algo.norm.weights``, one row per slot. Per-step statistics are
    used in eval mode (``algo.eval()``); in training mode BatchNorm normalises with batch statistics.

    Example:
        >>> import fastmaml as fm
        >>> algo = MAMLPlusPlus(fm.models.Conv4(ways=5), inner_lr=0.4, inner_steps=5)
        >>> algo.begin_iteration(0, 1000)
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        first_order: bool = False,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        multi_step_loss: bool = True,
        multi_step_loss_fraction: float = 0.1,
        first_order_fraction: float = 1 / 3,
        learned_lr: bool = True,
        per_step_bn_weights: bool | None = None,
        per_step_bn_statistics: bool | None = None,
        cosine_annealing: bool = True,
        min_outer_lr: float = 1e-5,
        execution: Execution = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is a {type(model).__name__}; pass a torch.nn.Module")
        steps = _check_steps(inner_steps)
        norms = batch_norms(model).values()
        weights = _switch(per_step_bn_weights, any(m.affine for m in norms), "per_step_bn_weights", "affine BatchNorm")
        statistics = _switch(
            per_step_bn_statistics,
            any(m.track_running_stats for m in norms),
            "per_step_bn_statistics",
            "BatchNorm with track_running_stats=True",
        )
        norm = PerStepNorm(model, steps + 1, weights, statistics) if weights or statistics else None
        # Per-step BatchNorm weights are learned in the outer loop only, so they stay out of the inner loop.
        fixed = set(norm.weight_names) if norm is not None else set()
        super().__init__(
            model,
            inner_lr,
            steps,
            first_order,
            loss_fn,
            adapt=(lambda name, p: name not in fixed) if fixed else None,
            rule=per_step(float(inner_lr), steps) if learned_lr else None,
            execution=execution,
        )
        self.norm = norm
        self.base_first_order = bool(first_order)
        self.multi_step_loss = bool(multi_step_loss)
        self.multi_step_loss_fraction = _fraction(multi_step_loss_fraction, "multi_step_loss_fraction")
        self.first_order_fraction = _fraction(first_order_fraction, "first_order_fraction")
        self.cosine_annealing, self.min_outer_lr = bool(cosine_annealing), float(min_outer_lr)
        self._collecting = False
        self.begin_iteration(0, 1)

    def begin_iteration(self, iteration: int, iterations: int) -> None:
        """Set the derivative order and the MSL weights for outer step ``iteration`` of ``iterations``."""
        self.first_order = self.base_first_order or iteration < self.first_order_fraction * iterations
        span = self.multi_step_loss_fraction * iterations
        self.msl_progress = iteration / span if span > 0 else math.inf

    def scheduler(
        self, optimizer: torch.optim.Optimizer, iterations: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Cosine annealing of the outer rate to ``min_outer_lr`` over ``iterations``; None if CA is off."""
        if not self.cosine_annealing:
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(int(iterations), 1), eta_min=self.min_outer_lr
        )

    # -- the functional state, extended with the per-step BatchNorm entries ----------------------------

    def spec(self) -> inner.InnerSpec:
        slot_state = self.norm.slot_state if self.norm is not None else None
        return dataclasses.replace(super().spec(), slot_state=slot_state)

    def functional_state(self) -> tuple[Params, Params, Params]:
        params, buffers, rule_state = super().functional_state()
        if self.norm is not None:
            params, buffers = self.norm.extend(params, buffers)
        return params, buffers, rule_state

    def task_function(
        self, params: Params, buffers: Params, rule_state: Params, steps: int, track: bool
    ) -> Callable[..., tuple[Tensor, ...]]:
        base = super().task_function(params, buffers, rule_state, steps, track)
        if not self._collecting:
            return base
        norm = self.norm

        def per_task(*tensors: Tensor) -> tuple[Tensor, ...]:
            with norm.recording() as recorder:
                losses, prediction = base(*tensors)
            return (losses, prediction, *norm.collected(recorder, steps))

        return per_task

    # -- the outer loop --------------------------------------------------------------------------------

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None) -> Tensor:
        """The MSL-weighted (or final-step) mean query loss; in training mode also updates BNRS statistics."""
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        collect = self.training and self.norm is not None and bool(self.norm.stat_layers)
        # With one step the MSL weights are [1]: the final loss alone, with no query forward before it.
        use_msl = self.multi_step_loss and steps > 1 and self.msl_progress < 1
        self._collecting = collect
        try:
            # Statistics are recorded in the query forward after every step, so they need track=True.
            losses, _, *stats = self.task_losses(batch, steps, track=use_msl or collect)
        finally:
            self._collecting = False
        if collect:
            self.norm.update_statistics(stats, steps)
        if use_msl:  # losses: (tasks, steps + 1); index 0 is before adaptation and carries no weight
            weights = torch.tensor(msl_weights(steps, self.msl_progress), dtype=losses.dtype, device=losses.device)
            return (losses[:, 1:] @ weights).mean()
        return (losses[:, -1] if losses.dim() == 2 else losses).mean()

    def predict(self, params: Params, x: Tensor, inner_steps: int | None = None) -> Tensor:
        """The model on ``x`` with ``params`` (from :meth:`adapt`), using the per-step BatchNorm slot of
        ``inner_steps`` (default: the training ``inner_steps``) adapted steps."""
        _, buffers, _ = self.functional_state()
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        with exact_batch_norm(self.exact_bn):
            return inner.forward(self.spec(), params, buffers, x, steps)
