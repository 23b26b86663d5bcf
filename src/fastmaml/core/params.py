"""Parameters as ``dict[str, Tensor]``: extraction from a module and the adaptation selector."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

Params = dict[str, Tensor]
"""Parameters (or buffers) by qualified name, as ``model.named_parameters()`` names them.

Example:
    >>> params, buffers = module_state(torch.nn.Linear(2, 1))
    >>> {name: tuple(p.shape) for name, p in params.items()}
    {'weight': (1, 2), 'bias': (1,)}
"""
# Which parameters adapt in the inner loop: None (all), names or name prefixes, or a predicate.
Selector = None | str | Iterable[str] | Callable[[str, Tensor], bool]


def module_state(model: nn.Module) -> tuple[Params, Params]:
    """Split a module into its differentiable parameters and its buffers (both by qualified name).

    Raises:
        ValueError: the module has no parameter with ``requires_grad=True``.

    Example:
        >>> params, buffers = module_state(torch.nn.BatchNorm1d(3))
        >>> list(params), list(buffers)
        (['weight', 'bias'], ['running_mean', 'running_var', 'num_batches_tracked'])
    """
    params: Params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no differentiable parameters; "
            "give it at least one parameter with requires_grad=True"
        )
    buffers = dict(model.named_buffers())
    return params, buffers


def select(params: Params, selector: Selector) -> tuple[str, ...]:
    """Names of the parameters that adapt in the inner loop.

    A string or an iterable of strings selects each parameter whose name equals one of them or starts
    with one of them followed by a dot (``"head"`` selects ``head.weight`` and ``head.bias``).

    Example:
        >>> select({"body.w": torch.ones(1), "head.w": torch.ones(1)}, "head")
        ('head.w',)
    """
    if selector is None:
        return tuple(params)
    if callable(selector):
        chosen = tuple(name for name, p in params.items() if selector(name, p))
    else:
        prefixes = (selector,) if isinstance(selector, str) else tuple(selector)
        unknown = [s for s in prefixes if not any(_matches(name, s) for name in params)]
        if unknown:
            raise ValueError(
                f"adapt={unknown!r} matches no parameter; valid names include {sorted(params)[:8]!r}"
            )
        chosen = tuple(name for name in params if any(_matches(name, s) for s in prefixes))
    if not chosen:
        raise ValueError("the adapt selector chose no parameter; select at least one parameter to adapt")
    return chosen


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def detached(params: Params) -> Params:
    """A copy of ``params`` cut from the autograd graph (shares storage)."""
    return {name: p.detach() for name, p in params.items()}

