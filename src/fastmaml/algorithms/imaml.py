"""iMAML: Meta-Learning with Implicit Gradients (Rajeswaran, Finn, Kakade, Levine 2019, arXiv:1909.04630).

The inner problem is proximal: phi = argmin L_support(phi) + lam/2 ||phi - theta||^2, solved
approximately by ``inner_steps`` of gradient descent that keep no graph, so memory does not grow with the
number of steps. Its optimality condition gives the meta-gradient without differentiating through the
solver (Lemma 1): d phi / d theta = (I + H / lam)^-1 with H the Hessian of L_support at phi, so

    g = (I + H / lam)^-1 grad_phi L_query(phi),

solved by ``cg_steps`` of conjugate gradient on Hessian-vector products (Algorithm 2). ``outer_loss``
returns the mean query loss as a value whose gradient w.r.t. theta is exactly the mean of g over tasks.

Departure: the paper's CG stops at a residual tolerance; here it runs exactly ``cg_steps`` iterations
(a data-dependent stop cannot run under ``vmap``), stepping by zero once the residual vanishes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML, _check_steps
from fastmaml.algorithms.surrogate import surrogate_loss
from fastmaml.core import inner
from fastmaml.core.batchnorm import exact_batch_norm
from fastmaml.core.execution import Execution
from fastmaml.core.params import Params, detached
from fastmaml.core.rules import proximal
from fastmaml.tasks.batch import TaskBatch


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` (given as ``matvec``), x0 = 0."""
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r, p = dict(b), dict(b)
    rr = _dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        p_ap = _dot(p, ap)
        # A zero residual gives 0/0; step by zero instead (no branching on values under vmap).
        alpha = torch.where(p_ap > 0, rr / p_ap, torch.zeros_like(rr))
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_next = _dot(r, r)
        beta = torch.where(rr > 0, rr_next / rr, torch.zeros_like(rr))
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_next
    return x


class IMAML(MAML):
    """Implicit MAML: proximal inner loop, meta-gradient by conjugate gradient.

    Args:
        lam: proximal strength lambda > 0; large lambda keeps phi near theta (the paper uses 0.5-2).
        cg_steps: conjugate-gradient iterations (>= 1) for the implicit meta-gradient.
        Other arguments: as :class:`MAML`; every parameter adapts. ``first_order`` is True because the
        inner loop keeps no graph; the meta-gradient is the implicit one, not the first-order one.

    Example:
        >>> import torch, fastmaml as fm
        >>> imaml = IMAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=10, lam=1.0)
        >>> imaml.outer_loss(fm.Sinusoid().sample_tasks(5, torch.Generator().manual_seed(0))).backward()
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 10,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        lam: float = 1.0,
        cg_steps: int = 5,
        execution: Execution = "auto",
    ) -> None:
        if not isinstance(lam, numbers.Real) or lam <= 0:
            raise ValueError(f"lam={lam!r}; iMAML's proximal strength lambda must be a number > 0")
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, numbers.Integral) or cg_steps < 1:
            raise ValueError(f"cg_steps={cg_steps!r}; conjugate gradient needs an integer >= 1 iterations")
        super().__init__(
            model,
            inner_lr,
            inner_steps,
            True,
            loss_fn,
            rule=proximal(float(inner_lr), float(lam)),
            execution=execution,
        )
        self.lam, self.cg_steps = float(lam), int(cg_steps)

    def functional_state(self) -> tuple[Params, Params, Params]:
        """As MAML's, with the proximal rule's state: the anchor theta, detached."""
        params, buffers, _ = super().functional_state()
        return params, buffers, detached(params)

    def outer_loss(self, batch: TaskBatch, inner_steps: int | None = None) -> Tensor:
        """Mean query loss whose ``.backward()`` leaves the mean implicit meta-gradient in ``.grad``."""
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"expected a fastmaml.TaskBatch, got {type(batch).__name__}; wrap the tensors in TaskBatch")
        steps = self.inner_steps if inner_steps is None else _check_steps(inner_steps)
        params, buffers, anchor = self.functional_state()
        self._check_model_accepts(batch, params, buffers)
        spec, names, lam = self.spec(), tuple(params), self.lam

        def per_task(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> tuple[Tensor, ...]:
            phi = inner.adapt(spec, anchor, buffers, anchor, support_x, support_y, steps)

            def loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
                # A private copy of the buffers: a module may update them in place (num_batches_tracked),
                # which the transforms below refuse for captured tensors.
                return inner.loss_of(spec, p, {n: b.clone() for n, b in buffers.items()}, x, y)

            query_grad, query_loss = torch.func.grad_and_value(loss)(phi, query_x, query_y)
            # H v by reverse-over-reverse at phi; the vjp is built once and reused by every CG step.
            _, hvp = torch.func.vjp(lambda p: torch.func.grad(loss)(p, support_x, support_y), phi)
            g = conjugate_gradient(
                lambda v: {n: v[n] + t / lam for n, t in hvp(v)[0].items()}, query_grad, self.cg_steps
            )
            return (query_loss, *(g[n] for n in names))

        # No outer graph: the meta-gradient is computed here, so memory is independent of inner_steps.
        with torch.no_grad(), exact_batch_norm(self.exact_bn):
            losses, *grads = self.mapper(per_task, *batch.tensors())  # grads[k]: (tasks, *shape)
        return surrogate_loss(losses.mean(), params, {n: g.mean(0) for n, g in zip(names, grads)})
