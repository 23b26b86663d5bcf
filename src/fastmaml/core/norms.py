"""Normalisations that are exact under ``vmap`` at every derivative order.

Measured with torch 2.14.1 (float64, second-order MAML meta-gradient against a plain autograd loop,
``tests/test_layer_matrix.py``): vmapping ``F.batch_norm``, ``F.layer_norm`` with an elementwise affine
and ``F.instance_norm`` with an affine gives meta-gradients 1e-3 to 2e-2 off (torch's batching rules for
their backward, pytorch/functorch#534). Layer and instance norm are exact under vmap without the affine,
so :func:`layer_norm` and :func:`instance_norm` run the native kernel without it and apply the affine
with elementwise ops (cheaper than normalising with plain ops, and exact in the same tests);
:func:`batch_norm` is written entirely with plain ops. :mod:`fastmaml.core.exact` routes those calls
here while a task dimension is vmapped, and to the ``native_*`` functions (the fused kernels, exact
outside vmap) otherwise.

Running statistics are read, never written: in training each call is normalised with the statistics
of the batch passed in (one task's support or query set, as in the MAML paper), so adapting never
mutates the model or leaks statistics between tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_native_batch_norm = F.batch_norm
_native_instance_norm = F.instance_norm
_native_layer_norm = F.layer_norm


def _affine(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
            shape: tuple[int, ...]) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` as one affine map ``x * scale + shift``, so the
    (large) activation is touched by two ops forward instead of five; ``weight``/``bias`` are viewed
    as ``shape``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.view(shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.view(shape)
    return x * scale + shift


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` from plain ops; ``x`` is (N, C, *spatial). Running statistics are read, never written.

    Example:
        >>> x = torch.randn(8, 3)
        >>> torch.allclose(batch_norm(x, None, None, training=True), F.batch_norm(x, None, None, training=True))
        True
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if training or running_mean is None or running_var is None:
        var, mean = torch.var_mean(x, [0, *range(2, x.dim())], correction=0, keepdim=True)
    else:
        mean, var = running_mean.view(shape), running_var.view(shape)
    return _affine(x, mean, var, weight, bias, eps, shape)


def native_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """The fused kernel with :func:`batch_norm`'s contract: in training, batch statistics and no writes.

    Example:
        >>> running_mean, running_var = torch.zeros(3), torch.ones(3)
        >>> out = native_batch_norm(torch.randn(8, 3), running_mean, running_var, training=True)
        >>> running_mean
        tensor([0., 0., 0.])
    """
    if training or running_mean is None or running_var is None:
        return _native_batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _native_batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)


def layer_norm(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None = None, bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` with its elementwise affine applied by plain ops after the native kernel."""
    y = _native_layer_norm(x, normalized_shape, None, None, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.instance_norm`` with its affine applied by plain ops after the native kernel (or, with
    ``use_input_stats=False``, the running statistics' affine map); ``x`` is (N, C, *spatial).
    Running statistics are read, never written."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if use_input_stats or running_mean is None or running_var is None:
        y = _native_instance_norm(x, None, None, None, None, True, 0.0, eps)
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        return y
    return _affine(x, running_mean.view(shape), running_var.view(shape), weight, bias, eps, shape)


def native_instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """The fused kernel with :func:`instance_norm`'s contract: input statistics never written to buffers."""
    if use_input_stats or running_mean is None or running_var is None:
        return _native_instance_norm(x, None, None, weight, bias, True, 0.0, eps)
    # torch 2.4's kernel copies the statistics back even with momentum 0 (off by an ulp): give it copies
    return _native_instance_norm(x, running_mean.clone(), running_var.clone(), weight, bias, False, 0.0, eps)
