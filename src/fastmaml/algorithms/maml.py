"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine 2017, arXiv:1703.03400).

The inner loop adapts a copy of the parameters to each task's support set (eq. 1); the outer loss is
the mean query loss of the adapted parameters over the meta-batch (eq. 2/3). Nothing here mutates the
module: parameters travel as dicts through ``torch.func.functional_call``.

Every algorithm of the family is this class composed differently: an inner-loop spec (which parameters
adapt, first or second order), an update rule (:mod:`fastmaml.core.rules`) and an outer objective
(:mod:`fastmaml.core.objective`); the options they share are declared once, in :class:`MetaOptions`.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fastmaml._text import with_article
from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm, has_batch_norm
from fastmaml.core.compiled import Compile, OuterEngine
from fastmaml.core.execution import EXECUTIONS, Execution, TaskMapper
from fastmaml.core.objective import Objective, QueryLoss, TaskContext
from fastmaml.core.params import Params, Selector, module_state, select
from fastmaml.core.rules import UpdateRule, sgd
from fastmaml.tasks.batch import TaskBatch


def _key(name: str) -> str:
    # nn.ParameterDict keys may not contain dots.
    return name.replace(".", "/")


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"inner_steps={steps!r}; it must be an integer >= 0")
    return int(steps)


@dataclass(frozen=True)
class MetaOptions:
    """The options every algorithm takes, in this order (declared once, so no signature can drift).

    Attributes:
        inner_lr: the inner step size alpha (the initial value for learned-rate rules).
        inner_steps: inner gradient steps per task during meta-training.
        first_order: drop second-order terms (FOMAML).
        loss_fn: ``loss_fn(prediction, target) -> scalar``; by default cross-entropy for integer
            targets and mean squared error otherwise.
        adapt: which parameters adapt in the inner loop (names, prefixes or a predicate); the others
            stay fixed there but still receive outer gradients. Default: all.
        rule: the inner update rule (:mod:`fastmaml.core.rules`); default ``sgd(inner_lr)``.
        execution: ``"vmap"``, ``"loop"`` or ``"auto"`` (:func:`fastmaml.core.execution.decide`).
        compile: compile the outer step: ``True``, ``False`` or ``"auto"`` (when it pays for itself;
            :mod:`fastmaml.core.compiled`).

    An algorithm extends this with its own keyword-only options; an option it sets itself is
    redeclared with ``init=False``.

    Example:
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), 0.4, 5, execution="loop")  # the first four positional
        >>> maml.options
        MetaOptions(inner_lr=0.4, inner_steps=5, first_order=False, loss_fn=None, adapt=None, rule=None,
                    execution='loop', compile='auto')
        >>> fm.IMAML.Options(lam=2.0).first_order  # iMAML's Options: these plus its own
        True
    """

    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    _: KW_ONLY
    adapt: Selector = None
    rule: UpdateRule | None = None
    execution: Execution = "auto"
    compile: Compile = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.inner_lr, numbers.Real) or isinstance(self.inner_lr, bool) or self.inner_lr < 0:
            raise ValueError(f"inner_lr={self.inner_lr!r}; the inner step size must be a number >= 0")
        object.__setattr__(self, "inner_lr", float(self.inner_lr))
        object.__setattr__(self, "inner_steps", check_steps(self.inner_steps))
        object.__setattr__(self, "first_order", bool(self.first_order))
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution={self.execution!r} is not one of {EXECUTIONS}; pick one of them")
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile={self.compile!r}; use True, False or 'auto'")


@dataclass(frozen=True)
class FirstOrderOptions(MetaOptions):
    """Options of an algorithm whose inner loop is first-order by definition (FOMAML, Reptile, iMAML)."""

    first_order: bool = True

    def __post_init__(self) -> None:
        if self.first_order is False:
            raise ValueError(
                "this algorithm is first-order by definition; drop first_order=false or use algorithm=maml"
            )
        super().__post_init__()


def option_names(options: type[MetaOptions]) -> tuple[str, ...]:
    """The constructor options of an algorithm (its ``Options`` fields that ``__init__`` takes), in order."""
    return tuple(f.name for f in dataclasses.fields(options) if f.init)


class MAML(nn.Module):
    """Meta-learns the initialisation of ``model``; itself a module holding the model and any learned
    inner-rule state, so ``maml.parameters()`` is everything the outer optimizer updates.

    Args:
        model: any ``nn.Module``; its buffers travel beside the parameters, never mutated.
        Options: see :class:`MetaOptions` (``inner_lr, inner_steps, first_order, loss_fn`` positional).

    ``outer_loss(batch).backward()`` is the fast path: the outer loss computes its meta-gradient by
    the fastest exact path for the workload when it is built (:mod:`fastmaml.core.compiled`).

    Example:
        >>> import torch.nn.functional as F, fastmaml as fm
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, loss_fn=F.mse_loss)
        >>> batch = fm.Sinusoid().sample_tasks(25, torch.Generator().manual_seed(0))
        >>> maml.outer_loss(batch).backward()
    """

    Options: ClassVar[type[MetaOptions]] = MetaOptions
    options: MetaOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # An algorithm that forwards (*args, **kwargs) to its Options shows their signature; a user's
        # subclass with an explicit __init__ keeps its own.
        init = inspect.signature(cls.__init__).parameters.values()
        forwards = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in init)
        cls.__signature__ = _signature(cls.Options) if forwards else None  # type: ignore[attr-defined]

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is {with_article(type(model).__name__)}; pass a torch.nn.Module")
        options = self.Options(*args, **kwargs)
        self.options = options
        self.inner_steps = options.inner_steps
        self.inner_lr = options.inner_lr
        self.first_order = options.first_order
        self.model = model
        params, _ = module_state(model)
        self.adapt_names = select(params, self.adapt_selector(model, options))
        self.rule = self.inner_rule(options)
        learned = self.rule.learned({name: params[name] for name in self.adapt_names})
        self.rule_state = nn.ParameterDict({_key(n): nn.Parameter(t) for n, t in learned.items()})
        self.loss_fn = options.loss_fn if options.loss_fn is not None else inner.default_loss
        self.mapper = TaskMapper(options.execution, owner=type(model).__name__, model=model)
        self.exact_bn = has_batch_norm(model)
        self.engine = OuterEngine(self.mapper, options.compile, self.exact_bn)
        self.objective: Objective = QueryLoss()
        self._checked_shapes: set[tuple] = set()

    # -- the composition (an algorithm configures these, it does not override the loops) ----------------

    def adapt_selector(self, model: nn.Module, options: MetaOptions) -> Selector:
        return options.adapt

    def inner_rule(self, options: MetaOptions) -> UpdateRule:
        return options.rule if options.rule is not None else sgd(options.inner_lr)

    def spec(self) -> inner.InnerSpec:
        return inner.InnerSpec(self.model, self.loss_fn, self.rule, self.adapt_names, self.first_order)

    def functional_state(self) -> tuple[Params, Params, Params]:
        """The live parameters, a private copy of the buffers, and the inner rule's learned state."""
        params, buffers = module_state(self.model)
        learned = {name: self.rule_state[_key(name)] for name in self.adapt_names if _key(name) in self.rule_state}
        return params, {name: b.clone() for name, b in buffers.items()}, learned

    def context(self, steps: int) -> TaskContext:
        params, buffers, learned = self.functional_state()
        return TaskContext(self.spec(), params, buffers, learned, steps)

    # -- the outer loop --------------------------------------------------------------------------------

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None, graph: bool = False) -> Tensor:
        """Mean over the meta-batch of the objective (MAML: the query loss after adaptation); for a shard
        of a larger meta-batch (``batch.total`` set by ``TaskBatch.shard``), its share of the whole mean.

        ``.backward()`` puts the meta-gradient in ``.grad``; it was computed by the fastest exact path
        when the loss was built. ``graph=True`` returns the plain autograd graph instead, for
        higher-order derivatives (``create_graph=True``).
        """
        ctx = self._prepare(batch, inner_steps)
        objective = self.outer_objective(ctx.steps)
        loss, aux = self.engine.loss(objective, ctx, batch.tensors(), graph, batch.denominator)
        finish = getattr(objective, "finish", None)
        if finish is not None and len(batch):
            finish(aux)
        return loss

    def outer_objective(self, steps: int) -> Objective:
        """The objective of the next outer loss (``self.objective``; MAML++ anneals its own)."""
        return self.objective

    def task_losses(
        self,
        batch: TaskBatch,
        inner_steps: int | None = None,
        track: bool = False,
        state: tuple[Params, Params, Params] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-task query losses after adaptation, and the query predictions (for evaluation).

        Returns:
            losses of shape (tasks,), or (tasks, steps + 1) with ``track=True`` (before adaptation and
            after each step); predictions of shape (tasks, query, *outputs), or
            (tasks, steps + 1, query, *outputs) with ``track=True``.
        """
        ctx = self._prepare(batch, inner_steps, state)

        def per_task(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
            return inner.task_loss(ctx.spec, ctx.params, ctx.buffers, ctx.learned, support_x, support_y, query_x,
                                   query_y, steps=ctx.steps, track=track)

        with exact_batch_norm(self.exact_bn):
            losses, predictions = self.mapper(per_task, *batch.tensors())
        return losses, predictions

    def _prepare(self, batch: TaskBatch, inner_steps: int | None,
                 state: tuple[Params, Params, Params] | None = None) -> TaskContext:
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"expected a fastmaml.TaskBatch, got {type(batch).__name__}; wrap the tensors in TaskBatch")
        steps = self.inner_steps if inner_steps is None else check_steps(inner_steps)
        params, buffers, learned = state if state is not None else self.functional_state()
        self._check_model_accepts(batch, params, buffers)
        return TaskContext(self.spec(), params, buffers, learned, steps)

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
        steps = self.inner_steps if inner_steps is None else check_steps(inner_steps)
        params, buffers, learned = self.functional_state()
        with exact_batch_norm(self.exact_bn):
            return inner.adapt(self.spec(), params, buffers, learned, support_x, support_y, steps)

    def predict(self, params: Params, x: Tensor, inner_steps: int | None = None) -> Tensor:
        """The model evaluated on ``x`` with the given (e.g. adapted) parameters."""
        _, buffers, _ = self.functional_state()
        slot = self.inner_steps if inner_steps is None else check_steps(inner_steps)
        with exact_batch_norm(self.exact_bn):
            return inner.forward(self.spec(), params, buffers, x, slot, query=True)

    def _check_model_accepts(self, batch: TaskBatch, params: Params, buffers: Params) -> None:
        """Turn a shape mismatch between data and model into a one-line error, once per input shape."""
        signature = (tuple(batch.support_x.shape[2:]), batch.support_x.dtype)
        if signature in self._checked_shapes or not len(batch):
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


def _signature(options: type[MetaOptions]) -> inspect.Signature:
    """``(model, <the options>)``: what ``help()`` and ``inspect.signature`` show for an algorithm class."""
    params = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(options):
        if f.init:
            kind = inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
            params.append(inspect.Parameter(f.name, kind, default=f.default, annotation=f.type))
    return inspect.Signature(params)


MAML.__signature__ = _signature(MetaOptions)  # type: ignore[attr-defined]
