"""Meta-RL as a core objective: the inner policy-gradient step is the core's inner step (any
:class:`~fastmaml.core.rules.UpdateRule`), and TRPO's post-adaptation surrogate is an
:class:`~fastmaml.core.objective.Objective` on one task, mapped over the meta-batch by the core's
:class:`~fastmaml.core.execution.TaskMapper` (the same vmap-or-loop decision as supervised tasks).

A task's support set for inner step k is ``(observations, target)`` with ``target`` packing what the
policy-gradient loss reads besides the policy's output: ``(N, T, action_dim + 2)`` = actions, advantage,
mask (Discrete actions: one action column). So :func:`pg_loss` is an ordinary ``loss_fn(prediction,
target)`` and :func:`fastmaml.core.inner.inner_step` takes the step, first-order or not, with any rule.

Differentiating the surrogate with respect to the initial parameters gives the exact second-order
meta-gradient through the inner steps (MAML, arXiv:1703.03400, eq. 1 with the policy-gradient loss of
section 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastmaml.core import inner
from fastmaml.core.objective import TaskContext
from fastmaml.core.params import Params
from fastmaml.rl import policies
from fastmaml.rl.episodes import Episodes


def pack_target(episodes: Episodes) -> Tensor:
    """(..., N, T, action_dim + 2): actions, advantage and mask side by side, the inner loss's target."""
    if episodes.advantages is None:
        raise ValueError("these episodes have no advantages yet; call fastmaml.rl.baseline.with_advantages")
    actions = episodes.actions if policies.is_gaussian(episodes.outputs) else episodes.actions.unsqueeze(-1)
    dtype = episodes.observations.dtype
    return torch.cat([actions.to(dtype), episodes.advantages.unsqueeze(-1).to(dtype),
                      episodes.mask.unsqueeze(-1).to(dtype)], -1)


def unpack_target(output: policies.Output, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(actions, advantages, mask)`` from :func:`pack_target`'s tensor."""
    actions = target[..., :-2] if policies.is_gaussian(output) else target[..., 0]
    return actions, target[..., -2], target[..., -1]


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # mean over the valid steps of one task: the last two dims are (N, T); leading dims (tasks) are kept
    return (values * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp(min=1)


def pg_loss(output: policies.Output, target: Tensor) -> Tensor:
    """The vanilla policy-gradient (REINFORCE with baseline) loss: -mean over steps of log pi(a|s) A."""
    actions, advantages, mask = unpack_target(output, target)
    return -_masked_mean(policies.log_prob(output, actions) * advantages, mask)


def surrogate_terms(output: policies.Output, target: Tensor, old: policies.Output) -> tuple[Tensor, Tensor]:
    """TRPO's surrogate ``-mean_t [pi(a|s) / pi_old(a|s) * A]`` and ``mean_t KL(pi_old || pi)`` (per task)."""
    actions, advantages, mask = unpack_target(output, target)
    ratio = torch.exp(policies.log_prob(output, actions) - policies.log_prob(old, actions))
    return -_masked_mean(ratio * advantages, mask), _masked_mean(policies.kl(old, output), mask)


def task_tensors(train: Sequence[Episodes], valid: Episodes | None = None) -> tuple[Tensor, ...]:
    """The meta-batch as flat tensors with a leading task dimension, what the task mapper maps over:
    ``(obs_1, target_1, ..., obs_k, target_k[, valid_obs, valid_target, *old_outputs])``."""
    out: list[Tensor] = []
    for episodes in train:
        out += [episodes.observations, pack_target(episodes)]
    if valid is not None:
        old = valid.outputs if policies.is_gaussian(valid.outputs) else (valid.outputs,)
        out += [valid.observations, pack_target(valid), *old]
    return tuple(out)


def adapt_task(ctx: TaskContext, *supports: Tensor) -> Params:
    """``len(supports) // 2`` inner steps of one task, step k on ``(supports[2k], supports[2k + 1])``
    (fresh episodes each step, sampled by the caller); returns every parameter."""
    params, state = ctx.params, inner.init_state(ctx.spec, ctx.params)
    for step in range(len(supports) // 2):
        obs, target = supports[2 * step], supports[2 * step + 1]
        params, state = inner.inner_step(ctx.spec, params, ctx.buffers, ctx.learned, state, obs, target, step)
    return params


@dataclass(frozen=True)
class TRPOSurrogate:
    """The outer objective of MAML-TRPO on one task: the surrogate loss after ``ctx.steps`` inner steps,
    with the mean KL from the policy that sampled the post-adaptation ("valid") episodes as aux.

    The task's tensors are :func:`task_tensors`' layout. :meth:`outputs` is the adapted policy's output
    on the valid observations, which TRPO's Fisher-vector products differentiate (trpo.py).

    Example:
        >>> objective = TRPOSurrogate()
    """

    key = None  # a fresh meta-batch of trajectories every iteration: never compiled

    def outputs(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, ...]:
        adapted = adapt_task(ctx, *task[:2 * ctx.steps])
        output = inner.forward(ctx.spec, adapted, ctx.buffers, task[2 * ctx.steps])
        return tuple(output) if policies.is_gaussian(output) else (output,)

    def __call__(self, ctx: TaskContext, *task: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        target, old = task[2 * ctx.steps + 1], as_output(task[2 * ctx.steps + 2:])
        loss, kl = surrogate_terms(as_output(self.outputs(ctx, *task)), target, old)
        return loss, (kl,)


def as_output(columns: Sequence[Tensor]) -> policies.Output:
    """A policy output from its flat columns: ``(mean, log_std)`` or the logits."""
    return (columns[0], columns[1]) if len(columns) == 2 else columns[0]
