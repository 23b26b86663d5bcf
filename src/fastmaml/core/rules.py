"""Inner-loop update rules as pairs of pure functions.

A rule is ``init(params) -> state`` and ``update(params, grads, state, step) -> params``. ``state`` is a
``dict[str, Tensor]`` of meta-learned quantities (learning rates): the outer loop optimises it beside the
model, so plain SGD, Meta-SGD's per-parameter rates and MAML++'s per-layer per-step rates are three small
rules over one inner loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastmaml.core.params import Params


@dataclass(frozen=True)
class UpdateRule:
    """An inner update rule: ``init`` builds the learnable state, ``update`` takes one step."""

    name: str
    init: Callable[[Params], Params]
    update: Callable[[Params, Params, Params, int], Params]


def sgd(lr: float) -> UpdateRule:
    """Plain gradient descent with a fixed rate: theta' = theta - lr * g (MAML, eq. 1)."""

    def init(params: Params) -> Params:
        return {}

    def update(params: Params, grads: Params, state: Params, step: int) -> Params:
        return {name: p - lr * grads[name] for name, p in params.items()}

    return UpdateRule("sgd", init, update)


def meta_sgd(lr: float) -> UpdateRule:
    """Meta-SGD (arXiv:1707.09835): one learned rate per parameter entry, initialised at ``lr``."""

    def init(params: Params) -> Params:
        return {name: torch.full_like(p.detach(), lr) for name, p in params.items()}

    def update(params: Params, grads: Params, state: Params, step: int) -> Params:
        return {name: p - state[name] * grads[name] for name, p in params.items()}

    return UpdateRule("meta_sgd", init, update)


def per_step(lr: float, steps: int) -> UpdateRule:
    """MAML++ LSLR (arXiv:1810.09502, section 4): one learned rate per parameter tensor and per step."""

    def init(params: Params) -> Params:
        return {name: torch.full((max(steps, 1),), lr, dtype=p.dtype, device=p.device)
                for name, p in params.items()}

    def update(params: Params, grads: Params, state: Params, step: int) -> Params:
        # Steps past the learned schedule (more steps at test than in training) reuse the last rate.
        return {name: p - state[name][min(step, steps - 1)] * grads[name] for name, p in params.items()}

    return UpdateRule("per_step", init, update)


def proximal(lr: float, lam: float) -> UpdateRule:
    """iMAML's inner rule (arXiv:1909.04630): gradient descent on L(phi) + lam/2 ||phi - theta||^2.

    ``state`` holds the anchor theta (iMAML passes the detached meta-parameters); nothing is learned,
    so ``init`` returns no state.
    """
    if lam <= 0:
        raise ValueError(f"lam={lam!r}; the proximal strength lambda must be > 0")

    def init(params: Params) -> Params:
        return {}

    def update(params: Params, grads: Params, state: Params, step: int) -> Params:
        return {name: p - lr * (grads[name] + lam * (p - state[name])) for name, p in params.items()}

    return UpdateRule("proximal", init, update)
