"""Meta-learning algorithms, each a short composition of the functional core."""

from torch import nn

from fastmaml.algorithms.maml import MAML

ALGORITHMS = {"maml": MAML}


def build(name: str, model: nn.Module, **options) -> nn.Module:
    """The algorithm ``name`` around ``model``; ``options`` are its constructor's keyword arguments."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](model, **options)


__all__ = ["ALGORITHMS", "MAML", "build"]
