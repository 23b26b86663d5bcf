"""Reptile: On First-Order Meta-Learning Algorithms (Nichol, Achiam, Schulman 2018, arXiv:1803.02999).

Each task trains a copy of theta for ``inner_steps`` steps to phi_i; the outer update moves theta towards
the mean, theta <- theta + epsilon (mean_i phi_i - theta) (Algorithm 2, the batched version). Here the
outer "gradient" theta - mean_i phi_i is handed to any torch optimizer through a surrogate loss
(:func:`fastmaml.core.objective.surrogate`): with plain SGD at learning rate epsilon that is exactly
Algorithm 2, and ``anneal=True`` anneals epsilon linearly to 0 over the run (the paper's
``meta-step-final 0``).

The paper's regime (its openai/supervised-reptile settings): ``inner_optimizer="adam"`` (Adam with
beta1 = 0 at rate ``inner_lr``), ``inner_batch`` examples per inner step, each step on the next
minibatch of the task's examples, and more inner steps at meta-test (the trainer's
``eval_inner_steps``). The recipe ``omniglot-5w1s-reptile`` sets all of it.

Adam's state: the paper's TensorFlow code restores only the model's variables between tasks, so its
Adam moments and step count run on across tasks and meta-iterations, and meta-test adapts from the
second moments training left (restored afterwards: evaluation never moves them). Its author on why
(openai/supervised-reptile#28): Reptile benefits from Adam's second-moment estimate; the momentum
hurt, hence beta1 = 0. ``carry_moments=True`` does the same: the second moments and the step count are
buffers of the algorithm (:class:`CarriedMoments`, saved in checkpoints), every task's Adam starts
from them, and after each meta-batch they advance by the tasks' increments (see
:meth:`CarriedMoments.advance` for the one approximation: the tasks of a meta-batch run side by side,
so each starts from the moments before the batch). With beta1 = 0 the first moment is the gradient
itself, so nothing else needs carrying. Without ``carry_moments`` each task's Adam starts from zeros.

Departures from the paper: (1) with ``carry_moments`` the meta-batch's tasks adapt in parallel from
the same moments (the paper's code runs them one after another). (2) Minibatches are strided, not
shuffled: step ``s`` takes every m-th example starting at ``s mod m`` (m = minibatches per pass), so
with class-ordered examples each minibatch holds every class in proportion, and no random numbers are
drawn inside the vmapped per-task function. (3) By default the
inner loop trains on the whole task, support and query concatenated (the paper has no query split
during meta-training; ``use_query=False`` trains on the support set only). Evaluation
(:meth:`task_losses`) adapts on the support set with the same rule, full batch, and scores the query set.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Hashable
from dataclasses import KW_ONLY
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, FirstOrderOptions, MetaOptions, _key
from fastmaml.core import inner
from fastmaml.core.objective import Objective, TaskContext, surrogate
from fastmaml.core.params import Params, detached, module_state
from fastmaml.core.rules import UpdateRule, adam
from fastmaml.tasks.batch import TaskBatch

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS = (0.0, 0.999)  # the paper's inner Adam: supervised-reptile's AdamOptimizer(beta1=0)


def minibatch_rows(examples: int, batch: int, step: int) -> slice:
    """The rows of inner step ``step`` when each pass over ``examples`` rows is cut into minibatches of
    about ``batch``: every m-th row from ``step mod m`` (m = ceil(examples / batch)); 0 = full batch.

    Example:
        >>> minibatch_rows(50, 10, 1)
        slice(1, None, 5)
    """
    if batch <= 0 or batch >= examples:
        return slice(None)
    passes = math.ceil(examples / batch)
    return slice(step % passes, None, passes)


def adapt_minibatches(ctx: TaskContext, x: Tensor, y: Tensor, batch: int) -> tuple[Params, Any]:
    """``ctx.steps`` inner updates from ``ctx.params``, step ``s`` on the minibatch :func:`minibatch_rows`
    picks; the adapted parameters and the rule's final state."""
    params = ctx.params
    state = inner.init_state(ctx.spec, params)
    for step in range(ctx.steps):
        rows = minibatch_rows(x.shape[0], batch, step)
        params, state = inner.inner_step(ctx.spec, params, ctx.buffers, ctx.learned, state, x[rows], y[rows], step)
    return params, state


class CarriedMoments(nn.Module):
    """Adam's second moments and step count, carried across tasks (``Reptile(carry_moments=True)``).

    Buffers: one per adapted parameter (its second moment, zeros at first) and ``count``, the Adam
    steps behind them. :meth:`moments` is the rule's ``carry``; :meth:`advance` moves them by a
    meta-batch.
    """

    def __init__(self, params: Params, beta2: float) -> None:
        super().__init__()
        self.names = tuple(params)
        self.beta2 = beta2
        for name, p in params.items():
            self.register_buffer(_key(name), torch.zeros_like(p.detach()))
        self.register_buffer("count", torch.zeros((), dtype=next(iter(params.values())).dtype))

    def moments(self) -> tuple[Params, Tensor]:
        return {name: self.get_buffer(_key(name)) for name in self.names}, self.get_buffer("count")

    @torch.no_grad()
    def advance(self, final: tuple[Tensor, ...], steps: int, tasks: int) -> None:
        """After a meta-batch of ``tasks`` tasks (all ranks' together) of ``steps`` Adam steps each, given
        this process's tasks' final second moments ``final`` (stacked over its tasks, in ``names`` order).

        A task adds d_i = nu_i - beta2^steps nu_0 to the moments it starts from; one after another the
        tasks would give beta2^(steps tasks) nu_0 + sum_i beta2^(steps (tasks - i)) d_i. Here every
        task's d_i is replaced by their mean: the same total weight, and an update linear in the mean
        over tasks, so shards all-reduced by task count (``Context.allreduce_buffers``) give what one
        process gives."""
        decay = self.beta2 ** steps
        whole = decay ** tasks
        weight = tasks if decay == 1.0 else (1.0 - whole) / (1.0 - decay)  # sum_i decay^(tasks - i)
        for name, nus in zip(self.names, final):
            nu = self.get_buffer(_key(name))
            nu.copy_(whole * nu + weight * (nus.mean(0) - decay * nu))
        self.get_buffer("count").add_(steps * tasks)


@dataclasses.dataclass(frozen=True)
class ReptileObjective:
    """Per task: the query loss of phi (to log), with gradient theta - phi (the Reptile direction)."""

    use_query: bool = True
    inner_batch: int = 0

    @property
    def key(self) -> Hashable:
        return ("reptile", self.use_query, self.inner_batch)

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        support_x, support_y, query_x, query_y = task
        x, y = support_x, support_y
        if self.use_query:  # (support + query, *features)
            x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        # No graph through the inner loop: the meta-gradient is computed here (and grad mode off makes
        # the vmapped inner loop 3-4x cheaper; the core's torch.func.grad ignores an outer no_grad).
        with torch.no_grad():
            start = detached(ctx.params)
            phi, state = adapt_minibatches(ctx._replace(params=start), x, y, self.inner_batch)
            loss = inner.loss_of(ctx.spec, phi, ctx.buffers, query_x, query_y)
        return surrogate(loss, ctx.params, {n: start[n] - phi[n] for n in ctx.params}), self.carried(ctx, state)

    def carried(self, ctx: TaskContext, state: Any) -> tuple[Tensor, ...]:
        return ()


@dataclasses.dataclass(frozen=True)
class CarryingReptileObjective(ReptileObjective):
    """:class:`ReptileObjective` that hands each task's final Adam second moments to ``moments``."""

    moments: CarriedMoments | None = None
    steps: int = 0
    tasks: int = 0

    @property
    def key(self) -> Hashable | None:
        return None  # reads and moves the carried moments: never compiled

    def carried(self, ctx: TaskContext, state: Any) -> tuple[Tensor, ...]:
        return tuple(state.nu[name] for name in ctx.spec.adapt_names)

    def finish(self, aux: tuple[Tensor, ...]) -> None:
        assert self.moments is not None
        self.moments.advance(aux, self.steps, self.tasks)


@dataclasses.dataclass(frozen=True)
class ReptileOptions(FirstOrderOptions):
    inner_steps: int = 5
    _: KW_ONLY
    use_query: bool = True
    inner_optimizer: str = "sgd"
    inner_batch: int = 0
    anneal: bool = False
    carry_moments: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner_optimizer={self.inner_optimizer!r}; use one of {', '.join(INNER_OPTIMIZERS)}")
        if self.carry_moments and self.inner_optimizer != "adam":
            raise ValueError("carry_moments=True carries Adam's moments; set inner_optimizer='adam' too")
        if self.inner_optimizer != "sgd" and self.rule is not None:
            raise ValueError("give either rule=... or inner_optimizer=..., not both")
        if isinstance(self.inner_batch, bool) or not isinstance(self.inner_batch, numbers.Integral) \
                or self.inner_batch < 0:
            raise ValueError(f"inner_batch={self.inner_batch!r}; give an integer >= 0 (0: the whole task)")


class Reptile(MAML):
    """First-order meta-learning by moving the initialisation towards task-adapted weights.

    Options: ``use_query``, train the inner loop on support and query together (default) or support
    only; ``inner_optimizer``, ``"sgd"`` (rate ``inner_lr``) or ``"adam"`` (the paper's: Adam with
    beta1 = 0, rate ``inner_lr``); ``inner_batch``, examples per inner step (0: all of them);
    ``anneal``, anneal the outer learning rate linearly to 0 over the run; ``carry_moments``, Adam's
    second moments run on across tasks and into meta-test, as in the paper's code (buffers
    ``algo.moments``). The others as :class:`MAML` (the inner loop is always first-order).

    ``outer_loss`` returns the mean query loss of the adapted weights (a number to log), built so that
    its gradient w.r.t. each parameter is exactly ``theta - mean_i phi_i``.

    Example:
        >>> import torch, fastmaml as fm
        >>> reptile = Reptile(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.001, inner_steps=5,
        ...                   inner_optimizer="adam", inner_batch=10)
        >>> reptile.outer_loss(fm.Sinusoid().sample_tasks(5, torch.Generator().manual_seed(0))).backward()
    """

    Options = ReptileOptions
    options: ReptileOptions

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.use_query = bool(self.options.use_query)
        self.objective: ReptileObjective = ReptileObjective(self.use_query, int(self.options.inner_batch))
        self.moments: CarriedMoments | None = None
        if self.options.carry_moments:
            params, _ = module_state(self.model)
            self.moments = CarriedMoments({name: params[name] for name in self.adapt_names}, ADAM_BETAS[1])
        self._tasks = 0

    def inner_rule(self, options: MetaOptions) -> UpdateRule:
        if getattr(options, "inner_optimizer", "sgd") == "adam":
            # beta1 = 0: the paper's setting (supervised-reptile's AdamOptimizer(beta1=0)); the carried
            # moments are read when a task starts, from the buffers built after this rule.
            carry = self._carried if getattr(options, "carry_moments", False) else None
            return adam(options.inner_lr, betas=ADAM_BETAS, carry=carry)
        return super().inner_rule(options)

    def _carried(self) -> tuple[Params, Tensor]:
        assert self.moments is not None
        return self.moments.moments()

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None, graph: bool = False) -> Tensor:
        self._tasks = batch.denominator if isinstance(batch, TaskBatch) else 0  # the whole meta-batch's tasks
        return super().outer_loss(batch, inner_steps, graph)

    def outer_objective(self, steps: int) -> Objective:
        if self.moments is None:
            return self.objective
        return CarryingReptileObjective(self.use_query, self.objective.inner_batch, self.moments, steps, self._tasks)

    def scheduler(
        self, optimizer: torch.optim.Optimizer, iterations: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """With ``anneal``: epsilon_t = epsilon (1 - t / iterations), the paper's linear schedule to 0."""
        if not self.options.anneal:
            return None
        total = max(int(iterations), 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1.0 - t / total))
