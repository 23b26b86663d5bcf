"""TRPO's outer step (Schulman et al. 2015, arXiv:1502.05477, appendix C): conjugate gradient on
Fisher-vector products of the mean KL, a step scaled to the KL bound, and a backtracking line search
that accepts the first step that lowers the surrogate and keeps the KL under the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fastmaml.core.params import Params

Objective = Callable[[Params], tuple[Tensor, Tensor]]


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
    return x


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


def trpo_step(objective: Objective, params: Params, config: TRPOConfig) -> tuple[Params, dict]:
    """One TRPO update of ``params`` (leaves, not modified) for ``objective(params) -> (loss, kl)``.

    Returns the new parameters (detached) and a record: loss and KL before, after, line-search steps taken
    (``ls_steps`` means none was accepted and the parameters are unchanged).
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss, kl = objective(leaves)
    grad = flat(torch.autograd.grad(loss, list(leaves.values()), retain_graph=True))
    fvp = fisher_vector_product(kl, leaves, config.cg_damping)
    direction = conjugate_gradient(fvp, -grad, config.cg_iters)
    curvature = direction @ fvp(direction)
    if not (math.isfinite(float(curvature)) and float(curvature) > 0):
        raise FloatingPointError(f"the Fisher-vector product gave curvature {float(curvature)}; raise cg_damping")
    step = direction * torch.sqrt(2 * config.max_kl / curvature)
    old_loss = loss.item()
    base = {n: p.detach() for n, p in leaves.items()}
    del loss, kl, fvp
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
