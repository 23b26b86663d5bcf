"""Exact meta-gradients for every stock layer, on both execution paths.

Not every torch kernel is exact under fastmaml's transforms (measured with torch 2.14.1, float64,
second-order MAML meta-gradient against a plain autograd loop; ``tests/test_layer_matrix.py``):

- under ``vmap`` over tasks, the batching rules for the backward of ``F.batch_norm``, and of
  ``F.layer_norm`` and ``F.instance_norm`` with an affine, are wrong (1e-3 to 2e-2 relative;
  pytorch/functorch#534), silently;
- the fused CPU attention kernel behind ``F.scaled_dot_product_attention`` (so ``nn.MultiheadAttention``
  and ``nn.Transformer*Layer``) and the ``F.embedding_bag`` kernel have no double backward: second
  order fails on every path.

:func:`exact_ops` fixes both for any module, yours too. A ``TorchFunctionMode`` routes each function of
:data:`ROUTES` to an exact formulation (:mod:`fastmaml.core.norms`) while a task dimension is vmapped
(:func:`vmapping`) and to the native kernel otherwise (exact there, and cheaper), ``F.embedding_bag`` to
``F.embedding`` and reductions (:mod:`fastmaml.core.embedding`) on both paths; and attention runs on
torch's math backend, which has every derivative, instead of the fused kernel. Everything else (group
and RMS norm, convolutions, pooling, embeddings, activations, dropout) is exact natively and untouched.
Recurrent layers cannot run under ``vmap`` at all; :func:`vmap_is_exact` tells ``execution="auto"``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from fastmaml.core import embedding, norms

# How many task-dimension vmaps enclose the current call, per thread (set by execution.run_vmap).
# A plain attribute rather than a ContextVar: torch.compile traces attributes, not ContextVar.get.
_vmap = threading.local()

# torch function -> (its route while a task dimension is vmapped, its route otherwise). A new route is
# one line here plus one line in tests/test_layer_matrix.py.
ROUTES: dict[Callable, tuple[Callable, Callable]] = {
    F.batch_norm: (norms.batch_norm, norms.native_batch_norm),
    F.layer_norm: (norms.layer_norm, F.layer_norm),
    F.instance_norm: (norms.instance_norm, norms.native_instance_norm),
    F.embedding_bag: (embedding.embedding_bag, embedding.embedding_bag),
}
# Attention functions: they run on torch's math backend within :func:`exact_ops`.
ATTENTION = frozenset({F.scaled_dot_product_attention, F.multi_head_attention_forward})
# Modules that call a routed function or attention; a module with its own ``forward`` may call anything.
ROUTED_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.EmbeddingBag,
)
# Modules ``vmap`` cannot run (their fused kernels have no batching rule): the loop is the exact path.
LOOP_ONLY_MODULES = (nn.RNNBase, nn.RNNCellBase)


@contextlib.contextmanager
def vmapping() -> Iterator[None]:
    """Marks the enclosed code as running under a vmap over tasks (plain-op normalisations there).

    Example:
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with exact_ops(), vmapping():  # batch norm from plain ops: exact meta-gradients under vmap
        ...     out = torch.func.vmap(bn)(torch.randn(2, 4, 3))  # 2 tasks of 4 examples
        >>> out.shape
        torch.Size([2, 4, 3])
    """
    _vmap.depth = _vmap_depth() + 1
    try:
        yield
    finally:
        _vmap.depth -= 1


def _vmap_depth() -> int:
    return getattr(_vmap, "depth", 0)


class _ExactOps(TorchFunctionMode):
    def __init__(self, stack: contextlib.ExitStack) -> None:
        super().__init__()
        self.stack = stack  # closed when :func:`exact_ops` exits
        self.math_attention = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        route = ROUTES.get(func)
        if route is not None:
            func = route[0] if _vmap_depth() else route[1]
        elif func in ATTENTION and not self.math_attention:
            # The math backend is composite: differentiable to any order and vmappable (the fused CPU
            # kernel has no double backward). Entered at the first attention call, once per context,
            # for the rest of it: the backend is global, so it also reaches the attention that
            # F.multi_head_attention_forward calls inside itself, which this mode does not see.
            self.stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            self.math_attention = True
        return func(*args, **(kwargs or {}))


def _own_forward(module: nn.Module) -> bool:
    # a class defined by exec without __name__ in its globals has a forward whose __module__ is None
    return not (type(module).forward.__module__ or "").startswith("torch.nn.")


def needs_exact_ops(model: nn.Module) -> bool:
    """Whether ``model`` may call a function :func:`exact_ops` routes: a normalisation or attention
    layer of :data:`ROUTED_MODULES`, or any module with its own ``forward`` (which may call anything).

    Example:
        >>> needs_exact_ops(fm.models.MLP([1, 40, 40, 1]))  # linear layers and activations only
        False
        >>> needs_exact_ops(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)))
        True
    """
    return any(isinstance(m, ROUTED_MODULES) or _own_forward(m) for m in model.modules())


def vmap_is_exact(model: nn.Module) -> bool:
    """Whether the vmap path gives ``model``'s exact meta-gradient (under :func:`exact_ops`): False for
    recurrent layers, which vmap cannot run, so ``execution="auto"`` takes the loop without trying.

    Example:
        >>> vmap_is_exact(fm.models.Conv4(1, 5)), vmap_is_exact(torch.nn.LSTM(2, 4))
        (True, False)
    """
    return not any(isinstance(m, LOOP_ONLY_MODULES) for m in model.modules())


@contextlib.contextmanager
def exact_ops(enabled: bool = True) -> Iterator[None]:
    """Within this context every routed function is exact on every path and attention has a double
    backward; normalisations never write running statistics.

    Example:
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with exact_ops(needs_exact_ops(bn)):
        ...     out = bn(torch.randn(4, 3))  # normalised with the batch's statistics
        >>> bn.running_mean  # read, never written
        tensor([0., 0., 0.])
    """
    if not enabled:
        yield
        return
    with contextlib.ExitStack() as stack, _ExactOps(stack):
        yield
