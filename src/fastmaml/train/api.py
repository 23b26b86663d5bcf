"""``fm.fit``: the one-call meta-trainer for a user's own model and task distribution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from fastmaml._text import with_article
from fastmaml.algorithms.maml import MAML
from fastmaml.train.outer import make_step, meta_train


def fit(
    model: nn.Module,
    tasks,
    outer_lr: float = 1e-3,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
    meta_batch_size: int = 25,
    iterations: int = 1000,
    first_order: bool = False,
    optimizer: type[torch.optim.Optimizer] | torch.optim.Optimizer = torch.optim.Adam,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    seed: int = 0,
    execution: str = "auto",
    compile: bool | str = "auto",
    log_every: int = 100,
    metrics_path: str | Path | None = None,
    progress: bool = True,
    **optimizer_options,
) -> MAML:
    """Meta-train ``model`` on ``tasks`` with MAML and return the trained ``MAML`` object.

    Args:
        model: any ``nn.Module``; it is trained in place (it is the MAML initialisation).
        tasks: a task distribution: anything with ``sample_tasks(tasks, generator) -> TaskBatch``.
        optimizer: a ``torch.optim`` class (built with ``lr=outer_lr`` and ``optimizer_options``, e.g.
            ``momentum=0.9`` for SGD) or an optimizer already built over ``model.parameters()``.
        seed: seeds the task stream: the same seed gives the same tasks.
        execution, compile: as :class:`fastmaml.MAML` (by default the library decides both).

    Example:
        >>> import fastmaml as fm
        >>> maml = fm.fit(fm.models.MLP([1, 40, 40, 1]), fm.Sinusoid(), iterations=10, progress=False)
        >>> task = fm.Sinusoid().sample_tasks(1, torch.Generator().manual_seed(1))
        >>> params = maml.adapt(task.support_x[0], task.support_y[0])  # one task: no task dimension
        >>> maml.predict(params, task.query_x[0]).shape
        torch.Size([10, 1])
    """
    if not hasattr(tasks, "sample_tasks"):
        raise TypeError(f"tasks is {with_article(type(tasks).__name__)}; pass a task distribution with "
                        "sample_tasks(tasks, generator), e.g. fm.Sinusoid()")
    if iterations < 0 or meta_batch_size < 1:
        raise ValueError(f"iterations={iterations}, meta_batch_size={meta_batch_size}; use iterations >= 0 "
                         "and meta_batch_size >= 1")
    maml = MAML(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, loss_fn=loss_fn,
                execution=execution, compile=compile)
    if isinstance(optimizer, torch.optim.Optimizer):
        outer = optimizer
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        outer = optimizer(maml.parameters(), lr=outer_lr, **optimizer_options)  # type: ignore[call-arg]
    else:
        raise TypeError(f"optimizer={optimizer!r}; pass a torch.optim class such as torch.optim.SGD, or an optimizer")
    meta_train(
        maml, outer, tasks, torch.Generator().manual_seed(seed), iterations=iterations,
        meta_batch_size=meta_batch_size, step=make_step(maml), log_every=log_every,
        metrics_path=Path(metrics_path) if metrics_path else None, progress=progress,
    )
    return maml
