"""TRPO's outer step (Schulman et al. 2015, arXiv:1502.05477, appendix C): conjugate gradient on
Fisher-vector products of the mean KL, a step scaled to the KL bound, and a backtracking line search
that accepts the first step that lowers the surrogate and keeps the KL under the bound.

Two exact Fisher-vector products (FVP) of the KL through the adaptation:

- :func:`fisher_vector_product`: the Hessian of the KL by double backward (any objective). Through an
  inner policy-gradient step this differentiates a graph that already holds a second derivative, so
  each product is a third-order pass (pytorch-maml-rl and learn2learn do this).
- :func:`gauss_newton_fvp`: ``K^T H_out K v`` with ``K`` the Jacobian of the adapted policy's outputs
  with respect to the initial parameters and ``H_out`` the (closed-form, per observation) Hessian of the
  KL in output space. At the old policy, where TRPO evaluates it, the KL's gradient with respect to
  the outputs is zero, so the remaining Hessian term ``sum (dKL/dout) d2out/dtheta2`` vanishes and this
  IS the Hessian, exactly (tests/test_rl_gradients.py checks it against an explicit Hessian in
  float64); each product is two second-order passes over a graph built once per meta-iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fastmaml.core.params import Params

Objective = Callable[[Params], tuple[Tensor, Tensor]]
FisherProduct = Callable[[Tensor], Tensor]
# fisher(params) -> (loss with its graph, v -> F v without damping): a faster exact FVP than the default
Fisher = Callable[[Params], tuple[Tensor, FisherProduct]]


@dataclass(frozen=True)
class TRPOConfig:
    """The paper's / pytorch-maml-rl's settings for 2D navigation."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_ratio: float = 0.8
    ls_steps: int = 15


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``."""
    return _conjugate_gradient(matvec, b, iters, tol)[0]


def _conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10
                        ) -> tuple[Tensor, Tensor]:
    """``(x, r)``: the solution and its residual ``r = b - A x`` (CG's recurrence keeps it)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, r


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start:start + p.numel()].view_as(p)
        start += p.numel()
    return out


def fisher_vector_product(kl: Tensor, params: Params, damping: float) -> Callable[[Tensor], Tensor]:
    """v -> (Hessian of ``kl`` w.r.t. ``params``) v + damping v, by double backward (exact, any graph)."""
    names = list(params)
    grads = flat(torch.autograd.grad(kl, [params[n] for n in names], create_graph=True))

    def fvp(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(grads @ v, [params[n] for n in names], retain_graph=True)
        return flat(hv) + damping * v

    return fvp


def gauss_newton_fvp(outputs: tuple[Tensor, ...], kl_of: Callable[[tuple[Tensor, ...]], Tensor],
                     params: Params) -> FisherProduct:
    """v -> K^T H_out K v: the Hessian of ``kl_of(outputs)`` w.r.t. ``params`` where the KL's gradient
    w.r.t. the outputs is zero (TRPO's old policy; see the module docstring), without damping.

    ``outputs`` carry the graph from ``params`` (the adapted policy's outputs); it is kept for every
    product. ``K v`` comes from the double-vjp identity ``K v = d/dz <K^T z, v>`` (``K^T z`` is built
    once, linear in a zero ``z``), so no product recomputes the adaptation.
    """
    names = list(params)
    inputs = [params[n] for n in names]
    at = [o.detach().requires_grad_(True) for o in outputs]
    kl_grads = torch.autograd.grad(kl_of(tuple(at)), at, create_graph=True)  # dKL/dout, zero in value
    # an output that does not depend on params (a fixed log-std) has a zero Jacobian: K v is zero there
    live = [i for i, o in enumerate(outputs) if o.requires_grad]
    probes = [torch.zeros_like(outputs[i], requires_grad=True) for i in live]
    transposed = torch.autograd.grad([outputs[i] for i in live], inputs, probes, create_graph=True,
                                     materialize_grads=True)

    def fvp(v: Tensor) -> Tensor:
        kv = [torch.zeros_like(o) for o in at]
        for i, k in zip(live, torch.autograd.grad(flat(transposed) @ v, probes, retain_graph=True,
                                                  materialize_grads=True)):
            kv[i] = k
        hkv = torch.autograd.grad(kl_grads, at, kv, retain_graph=True, materialize_grads=True)
        return flat(torch.autograd.grad([outputs[i] for i in live], inputs, [hkv[i] for i in live],
                                        retain_graph=True, materialize_grads=True))

    return fvp


def trpo_step(objective: Objective, params: Params, config: TRPOConfig, fisher: Fisher | None = None
              ) -> tuple[Params, dict]:
    """One TRPO update of ``params`` (leaves, not modified) for ``objective(params) -> (loss, kl)``.

    ``fisher`` supplies the loss and a faster exact FVP (:func:`gauss_newton_fvp`); by default the FVP is
    the double-backward Hessian of ``objective``'s KL. The line search evaluates ``objective`` without a
    graph. Returns the new parameters (detached) and a record: loss and KL before, after, line-search
    steps taken (``ls_steps`` means none was accepted and the parameters are unchanged).
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    if fisher is None:
        loss, kl = objective(leaves)
        fvp = fisher_vector_product(kl, leaves, config.cg_damping)
    else:
        loss, product = fisher(leaves)

        def fvp(v: Tensor) -> Tensor:
            return product(v) + config.cg_damping * v
    grad = flat(torch.autograd.grad(loss, list(leaves.values()), retain_graph=True))
    direction, residual = _conjugate_gradient(fvp, -grad, config.cg_iters)
    # x^T A x = x^T (b - r): CG's residual saves one more Fisher-vector product
    curvature = direction @ (-grad - residual)
    if not (math.isfinite(float(curvature)) and float(curvature) > 0):
        raise FloatingPointError(f"the Fisher-vector product gave curvature {float(curvature)}; raise cg_damping")
    step = direction * torch.sqrt(2 * config.max_kl / curvature)
    old_loss = loss.item()
    base = {n: p.detach() for n, p in leaves.items()}
    del loss, fvp
    record = {"loss": old_loss, "kl": 0.0, "ls_step": config.ls_steps}
    for k in range(config.ls_steps):
        candidate = {n: base[n] + config.ls_ratio**k * s for n, s in unflat(step, base).items()}
        with torch.no_grad():
            new_loss, new_kl = objective(candidate)
        if new_loss.item() < old_loss and new_kl.item() < config.max_kl:
            record.update(loss_after=new_loss.item(), kl=new_kl.item(), ls_step=k)
            return candidate, record
    record["loss_after"] = old_loss
    return base, record
