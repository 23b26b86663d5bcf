"""Meta-learning algorithms, each a short composition of the functional core; :func:`build` by name.

Every algorithm is an ``nn.Module`` with ``outer_loss(batch)`` (``.backward()`` puts the meta-gradient in
``algo.parameters()``), ``task_losses(batch, inner_steps, track)``, ``adapt``, ``predict``,
``begin_iteration(iteration, iterations)`` and ``scheduler(optimizer, iterations)``. Its options are its
``Options`` dataclass: the shared :class:`fastmaml.algorithms.maml.MetaOptions` plus its own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fastmaml.algorithms.anil import ANIL
from fastmaml.algorithms.fomaml import FOMAML
from fastmaml.algorithms.imaml import IMAML
from fastmaml.algorithms.maml import MAML, MetaOptions, option_names
from fastmaml.algorithms.mamlpp import MAMLPlusPlus
from fastmaml.algorithms.metasgd import MetaSGD
from fastmaml.algorithms.reptile import Reptile

ALGORITHMS: dict[str, type[MAML]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "mamlpp": MAMLPlusPlus,
    "reptile": Reptile,
    "imaml": IMAML,
}
"""Every algorithm by the name recipes and :func:`build` use.

Example:
    >>> list(ALGORITHMS)
    ['maml', 'fomaml', 'anil', 'metasgd', 'mamlpp', 'reptile', 'imaml']
    >>> ALGORITHMS["anil"].__name__
    'ANIL'
"""


def options(name: str) -> tuple[str, ...]:
    """The keyword options algorithm ``name`` takes (everything but the model).

    Example:
        >>> options("maml")
        ('inner_lr', 'inner_steps', 'first_order', 'loss_fn', 'adapt', 'rule', 'execution', 'compile')
        >>> sorted(set(options("imaml")) - set(options("maml")))  # iMAML's own
        ['cg_steps', 'damping', 'lam', 'lam_damping', 'max_grad_norm', 'pull_back']
    """
    return option_names(ALGORITHMS[name].Options)


def build(name: str, model: nn.Module, **kwargs: Any) -> MAML:
    """The algorithm ``name`` around ``model``, configured by ``kwargs``.

    An option given as ``None`` is dropped: ``None`` means "the algorithm's default" everywhere, so the
    trainer can pass its common options (``first_order``, ``head``...) to every algorithm.
    Algorithms that are first-order by definition (fomaml, reptile, imaml) refuse ``first_order=False``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or an option the algorithm does
            not take (the message names the algorithm it belongs to, if any, and the valid options).

    Example:
        >>> import fastmaml as fm
        >>> build("imaml", fm.models.MLP([1, 40, 40, 1]), inner_steps=20, lam=2.0).cg_steps
        5
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    valid = options(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    for key in kwargs:
        if key not in valid:
            owners = [other for other in ALGORITHMS if key in options(other)]
            where = f"belongs to {', '.join(owners)}, not {name}" if owners else f"is not an option of {name}"
            raise ValueError(f"option {key!r} {where}; {name} takes {', '.join(valid)}")
    return ALGORITHMS[name](model, **kwargs)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "FOMAML",
    "IMAML",
    "MAML",
    "MAMLPlusPlus",
    "MetaSGD",
    "MetaOptions",
    "Reptile",
    "build",
    "options",
]
