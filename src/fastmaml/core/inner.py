"""The one per-task function: adapt on the support set, then score the query set.

Everything here works on one task's tensors; :mod:`fastmaml.core.execution` runs it vmapped over the
task dimension or in a Python loop, so the two paths cannot drift apart.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml.core.params import Params, detached
from fastmaml.core.rules import UpdateRule

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer targets (classification), mean squared error otherwise (regression).

    Example:
        >>> default_loss(torch.zeros(2, 3), torch.tensor([0, 2]))  # cross-entropy of uniform logits: log 3
        tensor(1.0986)
        >>> default_loss(torch.zeros(2, 1), torch.ones(2, 1))  # mean squared error
        tensor(1.)
    """
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(prediction, target)
    return F.mse_loss(prediction, target)


@dataclass(frozen=True)
class InnerSpec:
    """The static part of the per-task computation.

    Attributes:
        model: the module whose parameters are swapped in through ``functional_call``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        rule: the inner update rule.
        adapt_names: parameters updated in the inner loop; the rest stay fixed there.
        first_order: drop the inner loop's Jacobian (FOMAML): gradients are taken at detached values.
        slot_state: optional ``(params, buffers, slot, query) -> (params, buffers)`` applied before
            every forward; ``slot`` is the number of inner updates already applied and ``query`` whether
            this is a query forward (MAML++ swaps in per-step BatchNorm weights and running statistics
            here). ``None``: the identity.

    Example:
        >>> from fastmaml.core import InnerSpec, default_loss, module_state, sgd
        >>> model = torch.nn.Linear(1, 1)
        >>> params, buffers = module_state(model)
        >>> spec = InnerSpec(model, default_loss, sgd(0.1), adapt_names=tuple(params), first_order=False)
    """

    model: nn.Module
    loss_fn: LossFn
    rule: UpdateRule
    adapt_names: tuple[str, ...]
    first_order: bool
    slot_state: Callable[[Params, Params, int, bool], tuple[Params, Params]] | None = None


def forward(spec: InnerSpec, params: Params, buffers: Params, x: Tensor, slot: int = 0, query: bool = False) -> Tensor:
    if spec.slot_state is not None:
        params, buffers = spec.slot_state(params, buffers, slot, query)
    if x.is_cuda and has_recurrent(spec.model):
        # cuDNN's RNN kernels fail under functional_call with swapped-in parameters and have no double
        # backward; torch's own recurrent kernels are composite, exact to any order (as attention's math
        # backend, fastmaml.core.exact).
        with torch.backends.cudnn.flags(enabled=False):
            return functional_call(spec.model, (params, buffers), (x,), strict=False)
    return functional_call(spec.model, (params, buffers), (x,), strict=False)


_RECURRENT: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def has_recurrent(model: nn.Module) -> bool:
    """Whether ``model`` holds a recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` or a cell); cached."""
    if model not in _RECURRENT:
        _RECURRENT[model] = any(isinstance(m, (nn.RNNBase, nn.RNNCellBase)) for m in model.modules())
    return _RECURRENT[model]


def loss_of(spec: InnerSpec, params: Params, buffers: Params, x: Tensor, y: Tensor, slot: int = 0) -> Tensor:
    loss = spec.loss_fn(forward(spec, params, buffers, x, slot), y)
    if loss.dim() != 0:
        raise ValueError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar; "
            "reduce it (e.g. reduction='mean')"
        )
    return loss


def inner_step(
    spec: InnerSpec, params: Params, buffers: Params, learned: Params, state: Any, x: Tensor, y: Tensor, step: int
) -> tuple[Params, Any]:
    """One inner update of the adapted parameters in ``params`` (the others pass through unchanged).

    ``learned`` is the rule's meta-learned state, ``state`` its per-task state (``spec.rule.init``);
    returns the new parameters and the new per-task state.

    Example:
        >>> from fastmaml.core import InnerSpec, default_loss, module_state, sgd
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> params, buffers = module_state(model)
        >>> spec = InnerSpec(model, default_loss, sgd(0.1), ("weight",), first_order=False)
        >>> x, y = torch.ones(4, 1), torch.zeros(4, 1)  # the loss is w**2, its gradient 2w
        >>> new, state = inner_step(spec, params, buffers, {}, spec.rule.init(params), x, y, step=0)
        >>> new["weight"]  # 1 - 0.1 * 2
        tensor([[0.8000]], grad_fn=<...>)
    """
    fast = {name: params[name] for name in spec.adapt_names}
    fixed = {name: p for name, p in params.items() if name not in fast}
    if spec.first_order:
        # No graph through the gradient: theta' = theta - lr * stopgrad(grad L(theta)).
        fixed_at, at = detached(fixed), detached(fast)
    else:
        fixed_at, at = fixed, fast

    def support_loss(adapted: Params, buffers: Params) -> Tensor:
        return loss_of(spec, {**fixed_at, **adapted}, buffers, x, y, step)

    # Buffers enter as an argument, not a capture: modules may update them in place (num_batches_tracked).
    grads = torch.func.grad(support_loss)(at, buffers)
    new, state = spec.rule.update(grads, state, fast, learned, step)
    return {**fixed, **new}, state


def init_state(spec: InnerSpec, params: Params) -> Any:
    """The rule's per-task state at the start of a task's adaptation from ``params``."""
    return spec.rule.init({name: params[name] for name in spec.adapt_names})


def adapt(
    spec: InnerSpec, params: Params, buffers: Params, learned: Params, x: Tensor, y: Tensor, steps: int
) -> Params:
    """``steps`` inner updates on one task's support set; returns every parameter (adapted and fixed).

    ``learned`` is the rule's meta-learned state (``{}`` for :func:`~fastmaml.core.rules.sgd`).

    Example:
        >>> from fastmaml.core import InnerSpec, default_loss, module_state, sgd
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> params, buffers = module_state(model)
        >>> spec = InnerSpec(model, default_loss, sgd(0.1), ("weight",), first_order=False)
        >>> x, y = torch.ones(4, 1), torch.zeros(4, 1)  # the loss is w**2: each step multiplies w by 0.8
        >>> adapt(spec, params, buffers, {}, x, y, steps=3)["weight"]
        tensor([[0.5120]], grad_fn=<...>)
    """
    state = init_state(spec, params)
    for step in range(steps):
        params, state = inner_step(spec, params, buffers, learned, state, x, y, step)
    return params


def task_loss(
    spec: InnerSpec,
    params: Params,
    buffers: Params,
    learned: Params,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    steps: int,
    track: bool = False,
) -> tuple[Tensor, Tensor]:
    """Adapt on the support set and return the query loss and query predictions of one task.

    With ``track=True`` the loss is a ``(steps + 1,)`` vector and the predictions gain a leading
    ``steps + 1`` dimension: before adaptation and after each inner step (MAML++'s multi-step loss and
    the evaluation curves use them).

    Example:
        >>> from fastmaml.core import InnerSpec, default_loss, module_state, sgd
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> params, buffers = module_state(model)
        >>> spec = InnerSpec(model, default_loss, sgd(0.1), ("weight",), first_order=False)
        >>> x, y = torch.ones(4, 1), torch.zeros(4, 1)  # support and query alike: the loss is w**2
        >>> loss, prediction = task_loss(spec, params, buffers, {}, x, y, x, y, steps=1, track=True)
        >>> loss  # before adaptation (w = 1) and after one step (w = 0.8)
        tensor([1.0000, 0.6400], grad_fn=<...>)
        >>> loss[-1].backward()  # the second-order meta-gradient: d(0.8 w)**2 / dw = 1.28 at w = 1
        >>> model.weight.grad
        tensor([[1.2800]])
    """
    losses, predictions = [], []
    state = init_state(spec, params)
    for step in range(steps):
        if track:
            predictions.append(forward(spec, params, buffers, query_x, step, query=True))
            losses.append(spec.loss_fn(predictions[-1], query_y))
        params, state = inner_step(spec, params, buffers, learned, state, support_x, support_y, step)
    prediction = forward(spec, params, buffers, query_x, steps, query=True)
    loss = spec.loss_fn(prediction, query_y)
    if not track:
        return loss, prediction
    return torch.stack([*losses, loss]), torch.stack([*predictions, prediction])
