"""Advantages: a linear feature baseline fitted per task, then GAE(lambda) (lambda=1: return - baseline).

The baseline is rllab's ``LinearFeatureBaseline`` as cbfinn/maml_rl and pytorch-maml-rl use it: value =
w . [o, o^2, t, t^2, t^3, 1] with o the observation clipped to [-10, 10] and t = step / 100, w the ridge
least-squares fit to the discounted returns of the task's own trajectories.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.rl.episodes import Episodes


def features(observations: Tensor, mask: Tensor) -> Tensor:
    """(..., T, obs_dim) -> (..., T, 2 * obs_dim + 4); rows of ended steps are zero."""
    obs = observations.reshape(*observations.shape[:-1], -1).clamp(-10, 10)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype).unsqueeze(-1) / 100.0
    t = t.expand(*obs.shape[:-1], 1)
    out = torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], -1)
    return out * mask.unsqueeze(-1)


def discounted(values: Tensor, mask: Tensor, discount: float) -> Tensor:
    """sum_k discount^k values[t + k] along the last (time) dimension, within each episode."""
    horizon = values.shape[-1]
    t = torch.arange(horizon, dtype=values.dtype)
    lag = t.unsqueeze(0) - t.unsqueeze(1)  # lag[t, k] = k - t
    weights = torch.where(lag >= 0, torch.as_tensor(discount, dtype=values.dtype) ** lag.clamp(min=0),
                          torch.zeros((), dtype=values.dtype))
    return (values * mask) @ weights.T


def fit_values(observations: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """The baseline's values (tasks, N, T), one ridge regression per task (in float64).

    As rllab, the ridge term grows tenfold (up to five times) until the solution is finite.
    """
    x = features(observations, mask).double().flatten(1, 2)  # (tasks, N*T, F)
    y = (returns * mask).double().flatten(1, 2).unsqueeze(-1)  # (tasks, N*T, 1)
    gram, rhs = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    for _ in range(5):
        # gram + reg I is symmetric positive definite: a Cholesky solve (MKL's threaded LU failed here on
        # rank-deficient Ant grams, 254 features from 30 steps, with "invalid pivots" at two threads)
        factor, info = torch.linalg.cholesky_ex(gram + reg * eye)
        weights = torch.cholesky_solve(rhs, factor)
        if not info.any() and bool(weights.isfinite().all()):
            break
        reg *= 10
    values = (x @ weights).squeeze(-1).reshape(returns.shape)
    return values.to(returns.dtype)


def with_advantages(episodes: Episodes, gamma: float, gae_lambda: float = 1.0, normalize: bool = True) -> Episodes:
    """``episodes`` with per-task GAE(lambda) advantages against the per-task linear baseline.

    ``normalize`` standardises each task's advantages over its valid steps (pytorch-maml-rl, learn2learn).
    """
    mask = episodes.mask
    returns = discounted(episodes.rewards, mask, gamma)
    values = fit_values(episodes.observations, returns, mask)
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = episodes.rewards + gamma * next_values - values
    advantages = discounted(deltas, mask, gamma * gae_lambda) * mask
    if normalize:
        count = mask.sum((1, 2), keepdim=True).clamp(min=1)
        mean = advantages.sum((1, 2), keepdim=True) / count
        var = (((advantages - mean) * mask) ** 2).sum((1, 2), keepdim=True) / count
        advantages = (advantages - mean) * mask / (var.sqrt() + 1e-8)
    return episodes.with_advantages(advantages.detach())
