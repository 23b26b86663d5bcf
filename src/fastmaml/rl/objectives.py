"""Meta-RL objectives over ``dict[str, Tensor]`` parameters: the inner policy-gradient step and the outer
post-adaptation surrogate with its KL, one task at a time.

:func:`task_objective` is the one per-task function; :func:`surrogate` maps it over the tasks of a
meta-batch with ``torch.func.vmap`` or a Python loop (the same code either way). Differentiating the
result with respect to the initial parameters gives the exact second-order meta-gradient through the
inner step (MAML, arXiv:1703.03400, eq. 1 with the policy-gradient loss of section 3.2), and twice
differentiating the KL gives TRPO's Fisher-vector products through the adaptation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml.core.params import Params, detached
from fastmaml.core.rules import sgd
from fastmaml.rl import policies
from fastmaml.rl.episodes import Episodes

EXECUTIONS = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class RLSpec:
    """The static part of the per-task computation.

    Attributes:
        policy: the module whose parameters are swapped in through ``functional_call``.
        inner_lr: the inner policy-gradient step size (0.1 in the paper's 2D navigation).
        first_order: drop the inner step's Jacobian (gradients taken at detached parameters).
        execution: ``vmap``, ``loop`` or ``auto`` (vmap: one batched graph for the meta-batch).
    """

    policy: nn.Module
    inner_lr: float
    first_order: bool = False
    execution: str = "auto"

    def __post_init__(self) -> None:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution={self.execution!r}; use one of {', '.join(EXECUTIONS)}")
        if self.inner_lr < 0:
            raise ValueError(f"inner_lr={self.inner_lr}; it must be >= 0")


def pg_loss(spec: RLSpec, params: Params, obs: Tensor, actions: Tensor, advantages: Tensor, mask: Tensor,
            outputs: policies.Output) -> Tensor:
    """The vanilla policy-gradient (REINFORCE with baseline) loss: -mean over steps of log pi(a|s) A."""
    log_prob = policies.log_prob(functional_call(spec.policy, params, (obs,)), actions)
    return -(log_prob * advantages * mask).sum() / mask.sum().clamp(min=1)


def inner_step(spec: RLSpec, params: Params, episodes: tuple) -> Params:
    """theta' = theta - inner_lr * grad pg_loss(theta) on one task's episodes (a ``Episodes.tensors()``)."""
    at = detached(params) if spec.first_order else params
    grads = torch.func.grad(lambda p: pg_loss(spec, p, *episodes))(at)
    return sgd(spec.inner_lr).step(params, grads)


def adapt(spec: RLSpec, params: Params, train: Sequence[tuple]) -> Params:
    """One inner step per element of ``train`` (fresh episodes after each step, sampled by the caller)."""
    for episodes in train:
        params = inner_step(spec, params, episodes)
    return params


def task_objective(spec: RLSpec, params: Params, train: Sequence[tuple], valid: tuple) -> tuple[Tensor, Tensor]:
    """One task's TRPO surrogate loss and mean KL after adaptation.

    loss = -mean_t [pi_theta'(a|s) / pi_old(a|s) * A] and kl = mean_t KL(pi_old || pi_theta') over the
    post-adaptation ("valid") episodes, where pi_old is the adapted policy that sampled them.
    """
    obs, actions, advantages, mask, old = valid
    output = functional_call(spec.policy, adapt(spec, params, train), (obs,))
    ratio = torch.exp(policies.log_prob(output, actions) - policies.log_prob(old, actions))
    count = mask.sum().clamp(min=1)
    loss = -(ratio * advantages * mask).sum() / count
    kl = (policies.kl(old, output) * mask).sum() / count
    return loss, kl


def surrogate(spec: RLSpec, params: Params, train: Sequence[Episodes], valid: Episodes) -> tuple[Tensor, Tensor]:
    """The meta-batch's mean surrogate loss and mean KL, differentiable with respect to ``params``."""
    train_tensors = tuple(e.tensors() for e in train)
    if spec.execution == "loop":
        tasks = valid.observations.shape[0]
        losses, kls = zip(*(task_objective(spec, params, [_task(t, i) for t in train_tensors],
                                           _task(valid.tensors(), i)) for i in range(tasks)))
        return torch.stack(losses).mean(), torch.stack(kls).mean()
    losses, kls = torch.func.vmap(lambda tr, va: task_objective(spec, params, tr, va))(train_tensors, valid.tensors())
    return losses.mean(), kls.mean()


def adapt_tasks(spec: RLSpec, params: Params, train: Sequence[Episodes]) -> Params:
    """Every task's adapted parameters, stacked on a leading task dimension (no graph kept)."""
    train_tensors = tuple(e.tensors() for e in train)
    base = detached(params)
    if spec.execution == "loop":
        tasks = train[0].observations.shape[0]
        per_task = [adapt(spec, base, [_task(t, i) for t in train_tensors]) for i in range(tasks)]
        return {name: torch.stack([p[name] for p in per_task]).detach() for name in base}
    adapted = torch.func.vmap(lambda tr: adapt(spec, base, tr))(train_tensors)
    return detached(adapted)


def _task(tensors: tuple, i: int) -> tuple:
    return tuple(tuple(t[i] for t in x) if isinstance(x, tuple) else x[i] for x in tensors)


def step_tasks(spec: RLSpec, params: Params, episodes: Episodes) -> Params:
    """One inner step for every task from per-task parameters (leading task dimension), no graph kept."""
    tensors = episodes.tensors()
    if spec.execution == "loop":
        per_task = [inner_step(spec, {n: p[i] for n, p in params.items()}, _task(tensors, i))
                    for i in range(episodes.observations.shape[0])]
        return {name: torch.stack([p[name] for p in per_task]).detach() for name in params}
    return detached(torch.func.vmap(lambda p, e: inner_step(spec, p, e))(detached(params), tensors))
