"""Inner-loop update rules: typed state owned by the rule, optax's ``init`` / ``update`` shape.

A rule keeps two kinds of state apart:

- ``learned(params) -> dict[str, Tensor]``: meta-learned quantities (Meta-SGD's per-entry rates,
  MAML++'s per-step rates). The algorithm holds them as ``nn.Parameter`` and the outer optimizer
  trains them beside the model; they are the same for every task.
- ``init(params) -> state``: per-task optimizer state (a ``NamedTuple``: momentum, Adam moments, a
  proximal anchor), built afresh from the starting parameters at the start of every task's adaptation
  (:func:`adam` can instead start every task from moments its owner carries across tasks).

``update(grads, state, params, learned, step) -> (new_params, new_state)`` takes one inner step.
Everything is a pure function of tensors, so a rule runs unchanged under ``vmap``, in a loop, and
under ``torch.compile``; second-order meta-gradients flow through the state like through the
parameters. An inner rule with momentum is then a few lines (:func:`momentum`, :func:`adam`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fastmaml.core.params import Params


class EmptyState(NamedTuple):
    """The per-task state of a rule that keeps none."""


class MomentumState(NamedTuple):
    velocity: Params


class AdamState(NamedTuple):
    mu: Params  # first moment
    nu: Params  # second moment
    count: Any = 0  # Adam steps taken before this task (a tensor when the moments run on across tasks)


class ProximalState(NamedTuple):
    anchor: Params  # theta, where the task's adaptation started


def _no_learned(params: Params) -> Params:
    return {}


def _no_state(params: Params) -> EmptyState:
    return EmptyState()


@dataclass(frozen=True)
class UpdateRule:
    """An inner update rule.

    Attributes:
        name: shown in errors and logs.
        update: ``(grads, state, params, learned, step) -> (new_params, new_state)``.
        init: ``params -> state``, the per-task optimizer state (default: none).
        learned: ``params -> dict``, the initial meta-learned tensors (default: none).

    Example:
        >>> def update(grads, state, params, learned, step):  # sign gradient descent, no state
        ...     return {name: p - 0.1 * grads[name].sign() for name, p in params.items()}, state
        >>> sign_sgd = UpdateRule("sign_sgd", update)
        >>> sign_sgd.step({"w": torch.zeros(2)}, {"w": torch.tensor([3.0, -0.5])})["w"]
        tensor([-0.1000,  0.1000])
    """

    name: str
    update: Callable[[Params, Any, Params, Params, int], tuple[Params, Any]]
    init: Callable[[Params], Any] = _no_state
    learned: Callable[[Params], Params] = _no_learned

    def step(self, params: Params, grads: Params, learned: Params | None = None) -> Params:
        """One update from a fresh per-task state (a single inner step), returning the new parameters.

        Example:
            >>> sgd(0.1).step({"w": torch.ones(2)}, {"w": torch.ones(2)})["w"]
            tensor([0.9000, 0.9000])
        """
        new, _ = self.update(grads, self.init(params), params, learned if learned is not None else {}, 0)
        return new


def sgd(lr: float, max_grad_norm: float | None = None) -> UpdateRule:
    """Plain gradient descent with a fixed rate: theta' = theta - lr * g (MAML, eq. 1).

    ``max_grad_norm`` clips g to that global norm first (None: no clipping).

    Example:
        >>> sgd(0.1).step({"w": torch.ones(2)}, {"w": torch.tensor([1.0, -2.0])})["w"]
        tensor([0.9000, 1.2000])
        >>> sgd(0.1, max_grad_norm=1.0).step({"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])})["w"]
        tensor([-0.0600, -0.0800])
    """
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r}; give a number > 0, or None for no clipping")

    def update(grads: Params, state: EmptyState, params: Params, learned: Params, step: int):
        if max_grad_norm is not None:
            grads = clip_by_global_norm(grads, max_grad_norm)
        return {name: p - lr * grads[name] for name, p in params.items()}, state

    return UpdateRule("sgd", update)


def meta_sgd(lr: float) -> UpdateRule:
    """Meta-SGD (arXiv:1707.09835): one learned rate per parameter entry, initialised at ``lr``.

    Example:
        >>> rule = meta_sgd(0.1)
        >>> rates = rule.learned({"w": torch.ones(2)})  # the algorithm meta-trains them
        >>> rates["w"]
        tensor([0.1000, 0.1000])
        >>> rule.step({"w": torch.ones(2)}, {"w": torch.ones(2)}, {"w": torch.tensor([0.1, 0.5])})["w"]
        tensor([0.9000, 0.5000])
    """

    def learned(params: Params) -> Params:
        return {name: torch.full_like(p.detach(), lr) for name, p in params.items()}

    def update(grads: Params, state: EmptyState, params: Params, rates: Params, step: int):
        return {name: p - rates[name] * grads[name] for name, p in params.items()}, state

    return UpdateRule("meta_sgd", update, learned=learned)


def per_step(lr: float, steps: int) -> UpdateRule:
    """MAML++ LSLR (arXiv:1810.09502, section 4): one learned rate per parameter tensor and per step.

    Example:
        >>> rule = per_step(0.1, steps=3)
        >>> rule.learned({"w": torch.ones(4, 4)})["w"]  # the rates of steps 0, 1 and 2
        tensor([0.1000, 0.1000, 0.1000])
        >>> params, grads, rates = {"w": torch.ones(1)}, {"w": torch.ones(1)}, {"w": torch.tensor([0.1, 0.2, 0.3])}
        >>> rule.update(grads, rule.init(params), params, rates, 2)[0]["w"]  # step 2 takes the third rate
        tensor([0.7000])
    """

    def learned(params: Params) -> Params:
        return {name: torch.full((max(steps, 1),), lr, dtype=p.dtype, device=p.device)
                for name, p in params.items()}

    def update(grads: Params, state: EmptyState, params: Params, rates: Params, step: int):
        # Steps past the learned schedule (more steps at test than in training) reuse the last rate.
        slot = min(step, max(steps, 1) - 1)
        return {name: p - rates[name][slot] * grads[name] for name, p in params.items()}, state

    return UpdateRule("per_step", update, learned=learned)


def later_steps_scaled(rule: UpdateRule, scale: float) -> UpdateRule:
    """``rule`` with the move of every step after the first scaled by ``scale`` (for SGD: a rate of
    ``scale * lr`` after the first step), as the MAML paper's meta-RL test scripts adapt (cbfinn/maml_rl).

    Example:
        >>> rule = later_steps_scaled(sgd(0.1), 0.5)
        >>> params, grads = {"w": torch.ones(1)}, {"w": torch.ones(1)}
        >>> [round(rule.update(grads, rule.init(params), params, {}, step)[0]["w"].item(), 6) for step in (0, 1)]
        [0.9, 0.95]
    """
    if scale == 1:
        return rule

    def update(grads: Params, state: Any, params: Params, learned: Params, step: int):
        new, state = rule.update(grads, state, params, learned, step)
        if step == 0:
            return new, state
        return {name: p + scale * (new[name] - p) for name, p in params.items()}, state

    return UpdateRule(f"{rule.name} (later steps x{scale:g})", update, rule.init, rule.learned)


def clip_by_global_norm(grads: Params, max_norm: float) -> Params:
    """``grads`` scaled by min(1, max_norm / ||grads||), the norm taken over every tensor together.

    Example:
        >>> clip_by_global_norm({"w": torch.tensor([3.0, 4.0])}, 1.0)["w"]
        tensor([0.6000, 0.8000])
    """
    norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))  # type: ignore[arg-type]
    # no branching on the value (vmap): the factor is exactly 1 under the threshold
    scale = torch.clamp(max_norm / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny), max=1.0)
    return {name: g * scale for name, g in grads.items()}


def proximal(lr: float, lam: float, max_grad_norm: float | None = None) -> UpdateRule:
    """iMAML's inner rule (arXiv:1909.04630): gradient descent on L(phi) + lam/2 ||phi - theta||^2.

    The anchor theta is the per-task state: the parameters the task's adaptation starts from.
    ``max_grad_norm`` clips the whole proximal gradient to that global norm (the paper's appendix
    suggests gradient clipping or a step-size check to keep the inner solver stable).

    Example:
        >>> rule = proximal(0.1, lam=1.0)
        >>> state = rule.init({"w": torch.zeros(1)})  # the anchor theta = 0
        >>> phi, state = rule.update({"w": torch.ones(1)}, state, {"w": torch.ones(1)}, {}, 1)
        >>> phi["w"]  # 1 - 0.1 * (gradient 1 + lam * (1 - 0))
        tensor([0.8000])
    """
    if lam <= 0:
        raise ValueError(f"lam={lam!r}; the proximal strength lambda must be > 0")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r}; give a number > 0, or None for no clipping")

    def init(params: Params) -> ProximalState:
        return ProximalState(dict(params))

    def update(grads: Params, state: ProximalState, params: Params, learned: Params, step: int):
        anchor = state.anchor
        full = {name: grads[name] + lam * (p - anchor[name]) for name, p in params.items()}
        if max_grad_norm is not None:
            full = clip_by_global_norm(full, max_grad_norm)
        return {name: p - lr * full[name] for name, p in params.items()}, state

    return UpdateRule("proximal", update, init=init)


def momentum(lr: float, beta: float = 0.9, nesterov: bool = False) -> UpdateRule:
    """Heavy-ball momentum: v' = beta v + g, theta' = theta - lr v' (Nesterov: theta - lr (g + beta v')).

    Example:
        >>> import fastmaml as fm
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_steps=5, rule=momentum(0.01, beta=0.9))
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta!r}; the momentum coefficient must be in [0, 1)")

    def init(params: Params) -> MomentumState:
        return MomentumState({name: torch.zeros_like(p) for name, p in params.items()})

    def update(grads: Params, state: MomentumState, params: Params, learned: Params, step: int):
        velocity = {name: beta * state.velocity[name] + g for name, g in grads.items()}
        direction = {name: grads[name] + beta * v for name, v in velocity.items()} if nesterov else velocity
        return {name: p - lr * direction[name] for name, p in params.items()}, MomentumState(velocity)

    return UpdateRule("momentum", update, init=init)


def adam(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_root: float = 1e-16,
    carry: Callable[[], tuple[Params, Tensor]] | None = None,
) -> UpdateRule:
    """Adam (Kingma and Ba 2014, arXiv:1412.6980, Algorithm 1) as an inner rule, bias-corrected.

    Departure: ``sqrt(v_hat + eps_root)`` instead of ``sqrt(v_hat)`` (optax's ``eps_root``): the square
    root's derivative is infinite at 0, and a second-order meta-gradient differentiates through it, so
    a gradient entry that is exactly zero (a dead ReLU) would turn the meta-gradient into NaN.

    ``carry``: ``carry() -> (nu, count)``, second moments and the number of Adam steps behind them,
    read when a task starts: each task starts from them instead of zeros, and its bias correction
    counts from ``count`` (Reptile's carried Adam state; whoever owns them advances them).

    Example:
        >>> import fastmaml as fm
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]), inner_steps=5, rule=adam(0.01))
    """
    b1, b2 = betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas={betas!r}; both Adam coefficients must be in [0, 1)")

    def init(params: Params) -> AdamState:
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        if carry is None:
            return AdamState(zeros, dict(zeros))
        nu, count = carry()
        return AdamState(zeros, {name: nu[name] for name in params}, count)

    def update(grads: Params, state: AdamState, params: Params, learned: Params, step: int):
        mu = {name: b1 * state.mu[name] + (1 - b1) * g for name, g in grads.items()}
        nu = {name: b2 * state.nu[name] + (1 - b2) * g * g for name, g in grads.items()}
        # step counts from 0; Adam's t from 1
        t = state.count + step + 1
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        new = {name: p - lr * (mu[name] / c1) / (torch.sqrt(nu[name] / c2 + eps_root) + eps)
               for name, p in params.items()}
        return new, AdamState(mu, nu, state.count)

    return UpdateRule("adam", update, init=init)
