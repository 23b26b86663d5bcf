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
from collections.abc import Hashable
from dataclasses import KW_ONLY
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml._text import with_article
from fastmaml.algorithms.maml import MAML, MetaOptions
from fastmaml.algorithms.per_step_bn import PerStepNorm, batch_norms
from fastmaml.core import inner
from fastmaml.core.objective import Objective, QueryLoss, TaskContext
from fastmaml.core.params import Params, Selector
from fastmaml.core.rules import UpdateRule, per_step, sgd


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


@dataclasses.dataclass(frozen=True)
class RecordingQueryLoss:
    """MAML++'s objective in training mode with per-step statistics: :class:`QueryLoss` that also
    returns the batch statistics of every query forward, then folds their mean into ``norm``."""

    loss: QueryLoss
    norm: PerStepNorm
    steps: int

    @property
    def key(self) -> Hashable | None:
        return None  # the recorder is a TorchFunctionMode with side effects: never compiled

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        # Statistics are recorded in the query forward after every step, so they need every step's forward.
        loss = dataclasses.replace(self.loss, track=True)
        with self.norm.recording() as recorder:
            value, _ = loss(ctx, *task)
        return value, tuple(self.norm.collected(recorder, ctx.steps))

    def finish(self, aux: tuple[Tensor, ...]) -> None:
        self.norm.update_statistics(list(aux), self.steps)


@dataclasses.dataclass(frozen=True)
class MAMLPlusPlusOptions(MetaOptions):
    inner_steps: int = 5
    adapt: Selector = dataclasses.field(default=None, init=False)  # all but the per-step BatchNorm weights
    rule: UpdateRule | None = dataclasses.field(default=None, init=False)  # learned_lr decides
    _: KW_ONLY
    multi_step_loss: bool = True
    multi_step_loss_fraction: float = 0.1
    first_order_fraction: float = 1 / 3
    learned_lr: bool = True
    per_step_bn_weights: bool | None = None
    per_step_bn_statistics: bool | None = None
    cosine_annealing: bool = True
    min_outer_lr: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self.multi_step_loss_fraction, "multi_step_loss_fraction")
        _fraction(self.first_order_fraction, "first_order_fraction")


class MAMLPlusPlus(MAML):
    """MAML with the MAML++ fixes, each switchable.

    Options: ``multi_step_loss``, ``multi_step_loss_fraction``, ``first_order_fraction``,
    ``learned_lr``, ``cosine_annealing`` (see the module docstring; ``first_order=True`` keeps first
    order for the whole run); ``per_step_bn_weights``, ``per_step_bn_statistics`` (``None``, the
    default, turns each on where the model has the BatchNorm layers it needs: affine / tracking running
    statistics); ``min_outer_lr``, the floor of the cosine schedule. The others: as :class:`MAML`.

    With per-step BatchNorm weights on, the model's own BatchNorm weights are unused (they get no
    gradient); the learned ones are ``algo.norm.weights``, one row per slot. Per-step statistics are
    used in eval mode (``algo.eval()``); in training mode BatchNorm normalises with batch statistics.

    Example:
        >>> import fastmaml as fm
        >>> algo = MAMLPlusPlus(fm.models.Conv4(ways=5), inner_lr=0.4, inner_steps=5)
        >>> algo.begin_iteration(0, 1000)
    """

    Options = MAMLPlusPlusOptions
    options: MAMLPlusPlusOptions

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is {with_article(type(model).__name__)}; pass a torch.nn.Module")
        options = self.Options(*args, **kwargs)
        norms = batch_norms(model).values()
        weights = _switch(options.per_step_bn_weights, any(m.affine for m in norms), "per_step_bn_weights",
                          "affine BatchNorm")
        statistics = _switch(options.per_step_bn_statistics, any(m.track_running_stats for m in norms),
                             "per_step_bn_statistics", "BatchNorm with track_running_stats=True")
        norm = PerStepNorm(model, options.inner_steps + 1, weights, statistics) if weights or statistics else None
        super().__init__(model, *args, **kwargs)
        self.norm = norm
        self.base_first_order = options.first_order
        self.multi_step_loss = options.multi_step_loss
        self.multi_step_loss_fraction = float(options.multi_step_loss_fraction)
        self.first_order_fraction = float(options.first_order_fraction)
        self.cosine_annealing, self.min_outer_lr = bool(options.cosine_annealing), float(options.min_outer_lr)
        self.begin_iteration(0, 1)

    def adapt_selector(self, model: nn.Module, options: MetaOptions) -> Selector:
        # Per-step BatchNorm weights are learned in the outer loop only, so they stay out of the inner loop.
        norms = batch_norms(model)
        fixed = {f"{layer}.{kind}" if layer else kind for layer, m in norms.items() if m.affine
                 for kind in ("weight", "bias")}
        uses_weights = _switch(options.per_step_bn_weights, any(m.affine for m in norms.values()),  # type: ignore[attr-defined]
                               "per_step_bn_weights", "affine BatchNorm")
        return (lambda name, p: name not in fixed) if fixed and uses_weights else None

    def inner_rule(self, options: MetaOptions) -> UpdateRule:
        learned = options.learned_lr  # type: ignore[attr-defined]
        return per_step(options.inner_lr, options.inner_steps) if learned else sgd(options.inner_lr)

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
        params, buffers, learned = super().functional_state()
        if self.norm is not None:
            params, buffers = self.norm.extend(params, buffers)
        return params, buffers, learned

    # -- the outer objective ---------------------------------------------------------------------------

    def outer_objective(self, steps: int) -> Objective:
        """The MSL-weighted (or final-step) query loss; in training mode it also updates BNRS statistics."""
        # With one step the MSL weights are [1]: the final loss alone, with no query forward before it.
        use_msl = self.multi_step_loss and steps > 1 and self.msl_progress < 1
        loss = QueryLoss(tuple(msl_weights(steps, self.msl_progress))) if use_msl else QueryLoss()
        if self.training and self.norm is not None and self.norm.stat_layers:
            return RecordingQueryLoss(loss, self.norm, steps)
        return loss
