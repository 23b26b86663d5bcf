"""iMAML: Meta-Learning with Implicit Gradients (Rajeswaran, Finn, Kakade, Levine 2019, arXiv:1909.04630).

The inner problem is proximal: phi = argmin L_support(phi) + lam/2 ||phi - theta||^2, solved
approximately by ``inner_steps`` of gradient descent that keep no graph, so memory does not grow with the
number of steps. Its optimality condition gives the meta-gradient without differentiating through the
solver (Lemma 1): d phi / d theta = (I + H / lam)^-1 with H the Hessian of L_support at phi, so

    g = (I + H / lam)^-1 grad_phi L_query(phi),

solved by ``cg_steps`` of conjugate gradient on Hessian-vector products (Algorithm 2). ``outer_loss``
returns the mean query loss as a value whose gradient w.r.t. theta is exactly the mean of g over tasks.

Departures: the paper's CG stops at a residual tolerance; here it runs exactly ``cg_steps`` iterations
(a data-dependent stop cannot run under ``vmap``), stepping by zero once the residual vanishes. Where the
support Hessian is indefinite (a non-convex inner loss far from a minimum), I + H / lam may have negative
curvature along a search direction, where CG diverges: at the first direction with p'Ap <= 0 the solve
is truncated (this and every later step is zero), as truncated-Newton / Hessian-free methods do.

The authors' released code (aravindr93/imaml_dev, behind the paper's Omniglot numbers) departs from the
paper's algorithm in two ways, both options here: ``pull_back`` (plain gradient steps on the support loss,
then one proximal step phi <- phi - alpha lam (phi - theta); meta-test adapts with the plain steps, their
``measure_accuracy --lam 0``) and ``lam_damping`` (their CG matrix is (1 + damping) I + H / (lam + 10)).
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Callable, Hashable
from dataclasses import KW_ONLY
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, FirstOrderOptions, MetaOptions
from fastmaml.core import inner
from fastmaml.core.objective import TaskContext, surrogate
from fastmaml.core.params import Params, Selector, detached
from fastmaml.core.rules import UpdateRule, proximal, sgd


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)  # type: ignore[return-value]


class CGResult(NamedTuple):
    x: Params  # the approximate solution
    negative_curvature: Tensor  # () bool: a direction with p'Ap <= 0 was met and the solve truncated there


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> CGResult:
    """Approximately solve ``A x = b`` for symmetric ``A`` (given as ``matvec``) from x0 = 0.

    Truncated at the first direction of non-positive curvature (p'Ap <= 0), where CG's step would
    diverge or go uphill (truncated Newton / Hessian-free, Martens 2010 section 4.6); with a
    positive-definite ``A`` that never happens. The result says whether it happened. When the very
    first direction (``b`` itself) already has p'Ap <= 0 there is no iterate to keep, and the solve
    returns ``b``: for iMAML the first-order meta-gradient (its lam -> infinity limit), instead of
    silently dropping the task with x = 0.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": torch.ones(2)}, steps=2).x["x"]
        tensor([0.5000, 0.2500])
    """
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r, p = dict(b), dict(b)
    rr = _dot(r, r)
    active = torch.ones((), dtype=torch.bool, device=rr.device)
    negative = torch.zeros((), dtype=torch.bool, device=rr.device)
    first_negative = negative
    for step in range(steps):
        ap = matvec(p)
        p_ap = _dot(p, ap)
        # A zero residual makes p = 0 and p'Ap = 0 too: that is convergence, not negative curvature.
        negative = negative | (active & (p_ap <= 0) & (rr > 0))
        if step == 0:
            first_negative = negative
        # No branching on values (vmap): a zero residual (0/0) or negative curvature steps by zero from here on.
        active = active & (p_ap > 0)
        alpha = torch.where(active, rr / torch.where(active, p_ap, torch.ones_like(p_ap)), torch.zeros_like(rr))
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_next = _dot(r, r)
        beta = torch.where(rr > 0, rr_next / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_next
    x = {n: torch.where(first_negative, b[n], x[n]) for n in x}
    return CGResult(x, negative)


NEGATIVE_CURVATURE = (
    "iMAML: {matrix} had negative curvature on {count} of {tasks} tasks (the inner problem is not at a minimum "
    "there); their conjugate-gradient solve was truncated. Raise lam, set algorithm_options.damping (e.g. 1.0) "
    "or algorithm_options.lam_damping (e.g. 10, as the authors' code), or solve the inner problem further "
    "(more inner_steps, a smaller inner_lr, algorithm_options.max_grad_norm)"
)


@dataclasses.dataclass(frozen=True)
class ImplicitObjective:
    """Per task: the query loss at phi, with gradient ((1 + damping) I + H / (lam + lam_damping))^-1
    grad L_query(phi) (Lemma 1 at damping = lam_damping = 0).

    ``pull_back_lr`` > 0: phi is the inner loop's result moved once toward theta,
    phi - pull_back_lr * lam * (phi - theta) (the authors' code; 0: no such step).
    ``aux`` is ``(negative_curvature,)``: whether the task's CG met a direction with p'Ap <= 0.
    """

    lam: float
    cg_steps: int
    damping: float = 0.0
    lam_damping: float = 0.0
    pull_back_lr: float = 0.0

    @property
    def key(self) -> Hashable:
        return ("imaml", self.lam, self.cg_steps, self.damping, self.lam_damping, self.pull_back_lr)

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        # No outer graph: the meta-gradient is computed here (grad mode off makes the vmapped solve
        # 3-4x cheaper; the transforms below ignore an outer no_grad).
        with torch.no_grad():
            query_loss, solve = self._solve(ctx, *task)
        return surrogate(query_loss, ctx.params, solve.x), (solve.negative_curvature,)

    def _solve(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, CGResult]:
        support_x, support_y, query_x, query_y = task
        spec, buffers, shift = ctx.spec, ctx.buffers, 1.0 + self.damping
        # From detached weights (the proximal anchor): no graph through the inner loop, whose memory
        # is then independent of the number of steps.
        anchor = detached(ctx.params)
        phi = inner.adapt(spec, anchor, buffers, ctx.learned, support_x, support_y, ctx.steps)
        if self.pull_back_lr:
            pull = self.pull_back_lr * self.lam
            phi = {n: p - pull * (p - anchor[n]) for n, p in phi.items()}
        curvature = 1.0 / (self.lam + self.lam_damping)

        def loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
            # A private copy of the buffers: a module may update them in place (num_batches_tracked),
            # which the transforms below refuse for captured tensors.
            return inner.loss_of(spec, p, {n: b.clone() for n, b in buffers.items()}, x, y)

        query_grad, query_loss = torch.func.grad_and_value(loss)(phi, query_x, query_y)
        # H v by reverse-over-reverse at phi; the vjp is built once and reused by every CG step.
        _, hvp = torch.func.vjp(lambda p: torch.func.grad(loss)(p, support_x, support_y), phi)  # type: ignore[misc]
        solve = conjugate_gradient(lambda v: {n: shift * v[n] + curvature * t for n, t in hvp(v)[0].items()},
                                   query_grad, self.cg_steps)
        return query_loss, solve

    def finish(self, aux: tuple[Tensor, ...]) -> None:
        """After the meta-batch: name any task whose CG met negative curvature, in one warning line."""
        (negative,) = aux  # (tasks,) bool
        count = int(negative.sum())
        if count:
            message = NEGATIVE_CURVATURE.format(matrix=self.matrix, count=count, tasks=negative.numel())
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    @property
    def matrix(self) -> str:
        """The CG system's matrix as the warning names it: I + H/lam unless damped."""
        identity = f"{1.0 + self.damping:g} I" if self.damping else "I"
        return f"{identity} + H/{self.lam + self.lam_damping:g}" if self.lam_damping else f"{identity} + H/lam"


@dataclasses.dataclass(frozen=True)
class IMAMLOptions(FirstOrderOptions):
    inner_steps: int = 10
    adapt: Selector = dataclasses.field(default=None, init=False)  # every parameter adapts
    rule: UpdateRule | None = dataclasses.field(default=None, init=False)  # always proximal(inner_lr, lam)
    _: KW_ONLY
    lam: float = 1.0
    cg_steps: int = 5
    damping: float = 0.0
    lam_damping: float = 0.0
    pull_back: bool = False
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.lam, numbers.Real) or isinstance(self.lam, bool) or self.lam <= 0:
            raise ValueError(f"lam={self.lam!r}; iMAML's proximal strength lambda must be a number > 0")
        if isinstance(self.cg_steps, bool) or not isinstance(self.cg_steps, numbers.Integral) or self.cg_steps < 1:
            raise ValueError(f"cg_steps={self.cg_steps!r}; conjugate gradient needs an integer >= 1 iterations")
        for name in ("damping", "lam_damping", "max_grad_norm"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name}={value!r}; it must be a number >= 0 (0: off)")
        if not isinstance(self.pull_back, bool):
            raise ValueError(f"pull_back={self.pull_back!r}; give true or false")


class IMAML(MAML):
    """Implicit MAML: proximal inner loop, meta-gradient by conjugate gradient.

    Options: ``lam``, the proximal strength lambda > 0 (large lambda keeps phi near theta; the paper
    uses 0.5-2); ``cg_steps``, conjugate-gradient iterations (>= 1) for the implicit meta-gradient;
    ``damping``, delta >= 0 added to the CG matrix, I (1 + delta) + H / lam (the iMAML authors' code
    uses 1.0 on Omniglot): it keeps the system positive definite where H has negative eigenvalues
    down to -lam (1 + delta), at the price of a biased (shrunk) meta-gradient; ``lam_damping``, added to
    lam in the CG matrix only, (1 + delta) I + H / (lam + lam_damping) (the authors' code: 10), which
    damps the Hessian's share further; ``pull_back``, the authors' inner solver instead of the paper's:
    ``inner_steps`` plain gradient steps on the support loss, then one step phi -= alpha lam (phi - theta),
    with meta-test (``adapt``, evaluation) running the plain steps alone; ``max_grad_norm``, clip each
    task's inner gradient (proximal, or plain with ``pull_back``) to this global norm (0: off), which keeps
    large-target regression from overshooting in the inner loop. The others: as :class:`MAML`; every parameter
    adapts. ``first_order`` is True because the inner loop keeps no graph; the meta-gradient is the
    implicit one, not the first-order one.

    A meta-batch where some task's CG met negative curvature (the system was indefinite: the inner
    problem is not at a minimum) gives a ``RuntimeWarning`` naming the knobs; those tasks' solves are
    truncated there, never continued into a wrong direction. ``negative_curvature_tasks`` counts them.

    Example:
        >>> import torch, fastmaml as fm
        >>> imaml = IMAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=16, lam=2.0, lam_damping=10.0)
        >>> imaml.outer_loss(fm.Sinusoid().sample_tasks(5, torch.Generator().manual_seed(0))).backward()
    """

    Options = IMAMLOptions
    options: IMAMLOptions

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        options = self.options
        self.lam, self.cg_steps = float(options.lam), int(options.cg_steps)
        pull_back_lr = float(options.inner_lr) if options.pull_back else 0.0
        self.objective = ImplicitObjective(self.lam, self.cg_steps, float(options.damping),
                                           float(options.lam_damping), pull_back_lr)

    # The trainer adds this to its error when the outer loss or meta-gradient turns non-finite.
    divergence_hint = ("; iMAML's implicit meta-gradient does not see its inner loop blow up: clip it with "
                       "algorithm_options.max_grad_norm (e.g. 10), take fewer or smaller inner steps, or anneal "
                       "the outer rate (lr_schedule=cosine)")

    def inner_rule(self, options: MetaOptions) -> UpdateRule:
        max_norm = float(options.max_grad_norm) or None  # type: ignore[attr-defined]
        if options.pull_back:  # type: ignore[attr-defined]
            return sgd(options.inner_lr, max_grad_norm=max_norm)
        return proximal(options.inner_lr, float(options.lam), max_grad_norm=max_norm)  # type: ignore[attr-defined]
