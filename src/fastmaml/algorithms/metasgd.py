"""Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (Li, Zhou, Chen, Li 2017, arXiv:1707.09835).

The inner step is theta' = theta - alpha (*) grad L_support(theta) with ``alpha`` a learned tensor of the
same shape as theta, optimised in the outer loop beside theta. The rates live in
``algo.rule_state`` (an ``nn.ParameterDict``), so ``algo.parameters()`` hands both to the optimizer.
"""

from __future__ import annotations

import dataclasses

from fastmaml.algorithms.maml import MAML, MetaOptions
from fastmaml.core.rules import UpdateRule, meta_sgd


@dataclasses.dataclass(frozen=True)
class MetaSGDOptions(MetaOptions):
    rule: UpdateRule | None = dataclasses.field(default=None, init=False)  # always meta_sgd(inner_lr)


class MetaSGD(MAML):
    """MAML whose inner rates are per-parameter-entry and meta-learned, starting at ``inner_lr``.

    Options: as :class:`MAML`, less ``rule`` (always :func:`fastmaml.core.rules.meta_sgd`).

    Example:
        >>> import fastmaml as fm
        >>> algo = MetaSGD(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
        >>> rates = sum(r.numel() for r in algo.rule_state.values())
        >>> rates == sum(p.numel() for p in algo.model.parameters())
        True
    """

    Options = MetaSGDOptions
    options: MetaSGDOptions

    def inner_rule(self, options: MetaOptions) -> UpdateRule:
        return meta_sgd(options.inner_lr)
