"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio, Vinyals 2019, arXiv:1909.09157).

Only the head (the final layer) adapts in the inner loop; the body is reused as is, yet it is still
meta-learned: the outer gradient flows through the adapted head into the body. "Only the head adapts"
is the core's parameter selector (``adapt=``), not ``requires_grad``, so the body keeps its gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import KW_ONLY

from torch import nn

from fastmaml.algorithms.maml import MAML, MetaOptions
from fastmaml.core.params import Selector


def last_linear(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Linear`` in ``model`` (registration order), the default head."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear to use as ANIL's head; "
            "pass head='<module name or parameter prefix>'"
        )
    return names[-1]


@dataclasses.dataclass(frozen=True)
class ANILOptions(MetaOptions):
    adapt: Selector = dataclasses.field(default=None, init=False)  # the head, below
    _: KW_ONLY
    head: str | Iterable[str] | None = None


class ANIL(MAML):
    """MAML whose inner loop adapts only ``head``.

    Options: ``head``, a module name or parameter-name prefix (or several) naming the head; default:
    the last ``nn.Linear`` of the model. The others: as :class:`MAML`, less ``adapt``.

    Example:
        >>> import fastmaml as fm
        >>> ANIL(fm.models.Conv4(ways=5)).adapt_names
        ('head.weight', 'head.bias')
    """

    Options = ANILOptions
    options: ANILOptions

    def adapt_selector(self, model: nn.Module, options: MetaOptions) -> Selector:
        head = options.head if isinstance(options, ANILOptions) else None
        self.head = last_linear(model) if head is None else head
        return self.head
