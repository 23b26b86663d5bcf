"""First-order MAML (Finn, Abbeel, Levine 2017, arXiv:1703.03400, section 5.2).

MAML with the second-order terms dropped: the meta-gradient is the query gradient at the adapted
parameters, ``sum_i grad L_query(theta'_i)``, so the inner loop keeps no graph of its own gradients.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML
from fastmaml.core.execution import Execution
from fastmaml.core.params import Selector
from fastmaml.core.rules import UpdateRule


class FOMAML(MAML):
    """MAML with ``first_order=True`` as a named algorithm; see :class:`MAML` for the arguments.

    Example:
        >>> import fastmaml as fm
        >>> fomaml = FOMAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
        >>> fomaml.first_order
        True
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        adapt: Selector = None,
        rule: UpdateRule | None = None,
        execution: Execution = "auto",
    ) -> None:
        super().__init__(
            model, inner_lr, inner_steps, True, loss_fn, adapt=adapt, rule=rule, execution=execution
        )
