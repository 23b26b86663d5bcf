"""First-order MAML (Finn, Abbeel, Levine 2017, arXiv:1703.03400, section 5.2).

MAML with the second-order terms dropped: the meta-gradient is the query gradient at the adapted
parameters, ``sum_i grad L_query(theta'_i)``, so the inner loop keeps no graph of its own gradients.
"""

from __future__ import annotations

from fastmaml.algorithms.maml import MAML, FirstOrderOptions


class FOMAML(MAML):
    """MAML with ``first_order=True`` as a named algorithm; the options are :class:`MAML`'s.

    Example:
        >>> import fastmaml as fm
        >>> fomaml = FOMAML(fm.models.MLP([1, 40, 40, 1]), inner_lr=0.01)
        >>> fomaml.first_order
        True
    """

    Options = FirstOrderOptions
