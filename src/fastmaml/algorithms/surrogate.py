"""Outer losses for algorithms whose meta-gradient is computed directly (Reptile, iMAML)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.core.params import Params


def surrogate_loss(value: Tensor, params: Params, meta_grads: Params) -> Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params[name]`` is exactly ``meta_grads[name]``.

    ``value + sum((theta - stopgrad(theta)) * g)``: the second term is zero in value and has gradient
    ``g``, so ``.backward()`` leaves the precomputed meta-gradient in ``.grad`` and any torch optimizer
    applies it, while the logged number stays a real loss.

    Example:
        >>> theta = torch.ones(2, requires_grad=True)
        >>> surrogate_loss(torch.tensor(3.0), {"w": theta}, {"w": torch.tensor([1.0, -1.0])}).backward()
        >>> theta.grad
        tensor([ 1., -1.])
    """
    terms = [
        ((p - p.detach()) * meta_grads[name].detach()).sum()
        for name, p in params.items()
        if name in meta_grads
    ]
    return value.detach() + torch.stack(terms).sum()
