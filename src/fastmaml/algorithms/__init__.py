"""Meta-learning algorithms, each a short composition of the functional core."""

from fastmaml.algorithms.maml import MAML

__all__ = ["MAML"]
