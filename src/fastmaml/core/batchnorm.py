"""The names the algorithms use to enter fastmaml's exact routing (batch norm was its first op).

:func:`exact_batch_norm` and :func:`has_batch_norm` are :func:`fastmaml.core.exact.exact_ops` and
:func:`fastmaml.core.exact.needs_exact_ops`: batch, layer and instance norm under vmap, and attention's
double backward, for any module (see :mod:`fastmaml.core.exact`). The formulations live in
:mod:`fastmaml.core.norms`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch import nn

from fastmaml.core.exact import exact_ops, needs_exact_ops, vmapping
from fastmaml.core.norms import batch_norm, native_batch_norm

__all__ = ["batch_norm", "exact_batch_norm", "has_batch_norm", "native_batch_norm", "vmapping"]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` needs the exact routing (:func:`fastmaml.core.exact.needs_exact_ops`).

    Example:
        >>> has_batch_norm(fm.models.Conv4(1, 5)), has_batch_norm(fm.models.MLP([1, 40, 40, 1]))
        (True, False)
    """
    return needs_exact_ops(model)


def exact_batch_norm(enabled: bool = True) -> AbstractContextManager[None]:
    """:func:`fastmaml.core.exact.exact_ops`: every routed op exact on every path within the context.

    Example:
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with exact_batch_norm():
        ...     out = bn(torch.randn(4, 3))  # normalised with the batch's statistics
        >>> bn.running_mean  # read, never written
        tensor([0., 0., 0.])
    """
    return exact_ops(enabled)
