"""Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (Li, Zhou, Chen, Li 2017, arXiv:1707.09835).

The inner step is theta' = theta - alpha (*) grad L_support(theta) with ``alpha`` a learned tensor of the
same shape as theta, optimised in the outer loop beside theta. The rates live in
``algo.rule_state`` (an ``nn.ParameterDict``), so ``algo.parameters()`` hands both to the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML
from fastmaml.core.execution import Execution
from fastmaml.core.params import Selector
from fastmaml.core.rules import meta_sgd


class MetaSGD(MAML):
    """MAML whose inner rates are per-parameter-entry and meta-learned, starting at ``inner_lr``.

    Args: as :class:`MAML`, less ``rule`` (always :func:`fastmaml.core.rules.meta_sgd`).

    Example:
        >>> import fastmaml as fm
        >>> algo = MetaSGD(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
        >>> rates = sum(r.numel() for r in algo.rule_state.values())
        >>> rates == sum(p.numel() for p in algo.model.parameters())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        adapt: Selector = None,
        execution: Execution = "auto",
    ) -> None:
        super().__init__(
            model,
            inner_lr,
            inner_steps,
            first_order,
            loss_fn,
            adapt=adapt,
            rule=meta_sgd(float(inner_lr)),
            execution=execution,
        )
