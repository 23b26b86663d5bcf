"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio, Vinyals 2019, arXiv:1909.09157).

Only the head (the final layer) adapts in the inner loop; the body is reused as is, yet it is still
meta-learned: the outer gradient flows through the adapted head into the body. "Only the head adapts"
is the core's parameter selector (``adapt=``), not ``requires_grad``, so the body keeps its gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML
from fastmaml.core.execution import Execution
from fastmaml.core.rules import UpdateRule


def last_linear(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Linear`` in ``model`` (registration order), the default head."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear to use as ANIL's head; "
            "pass head='<module name or parameter prefix>'"
        )
    return names[-1]


class ANIL(MAML):
    """MAML whose inner loop adapts only ``head``.

    Args:
        head: a module name or parameter-name prefix (or several) naming the head; default: the last
            ``nn.Linear`` of the model. Other arguments: as :class:`MAML`.

    Example:
        >>> import fastmaml as fm
        >>> ANIL(fm.models.Conv4(ways=5)).adapt_names
        ('head.weight', 'head.bias')
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        head: str | Iterable[str] | None = None,
        rule: UpdateRule | None = None,
        execution: Execution = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model is a {type(model).__name__}; pass a torch.nn.Module")
        head = last_linear(model) if head is None else head
        super().__init__(
            model,
            inner_lr,
            inner_steps,
            first_order,
            loss_fn,
            adapt=head,
            rule=rule,
            execution=execution,
        )
        self.head = head
