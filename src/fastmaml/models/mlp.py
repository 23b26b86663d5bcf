"""A plain multi-layer perceptron."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Linear layers of the given sizes with ReLU between them (none after the last).

    Example:
        >>> MLP([1, 40, 40, 1])  # the MAML paper's sinusoid network
        MLP(...)
    """

    def __init__(self, sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> None:
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"MLP sizes={list(sizes)}; give at least an input and an output size, all >= 1")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)

    def __getitem__(self, index):
        # nn.Sequential slices by calling type(self)(...), which MLP's signature does not take.
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)
