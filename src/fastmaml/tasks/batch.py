"""TaskBatch: a meta-batch of tasks, tasks along the leading dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fastmaml._text import with_article


@dataclass(frozen=True)
class TaskBatch:
    """Support and query sets of ``tasks`` tasks.

    Shapes: ``support_x`` (tasks, support, *features), ``support_y`` (tasks, support, *targets),
    ``query_x`` (tasks, query, *features), ``query_y`` (tasks, query, *targets).

    ``total`` is set on a shard of a larger meta-batch (:meth:`shard`): the number of tasks of the whole
    meta-batch, by which an outer loss divides the sum of this shard's task losses (instead of taking
    their mean), so the shards' meta-gradients add up to the whole batch's with the same per-task scale.

    Example:
        >>> batch = TaskBatch(torch.zeros(4, 10, 1), torch.zeros(4, 10, 1), torch.zeros(4, 5, 1), torch.zeros(4, 5, 1))
        >>> len(batch), batch.denominator, batch.shard(0, 3).denominator
        (4, 4, 4)
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    total: int | None = None

    def __post_init__(self) -> None:
        names = ("support_x", "support_y", "query_x", "query_y")
        tensors = self.tensors()
        for name, t in zip(names, tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"TaskBatch.{name} is {with_article(type(t).__name__)}; pass a torch.Tensor")
            if t.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} has shape {tuple(t.shape)}; it needs (tasks, examples, ...): "
                    "add the task dimension with .unsqueeze(0)"
                )
        counts = {name: t.shape[0] for name, t in zip(names, tensors)}
        if len(set(counts.values())) > 1:
            raise ValueError(f"TaskBatch task counts differ: {counts}; every tensor needs the same leading size")
        for side, x, y in (("support", self.support_x, self.support_y), ("query", self.query_x, self.query_y)):
            if x.shape[1] != y.shape[1]:
                raise ValueError(
                    f"TaskBatch {side}_x has {x.shape[1]} examples per task but {side}_y has {y.shape[1]}; "
                    "give one target per example"
                )
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            raise ValueError(
                f"TaskBatch support_x features {tuple(self.support_x.shape[2:])} differ from query_x "
                f"features {tuple(self.query_x.shape[2:])}; support and query must have the same shape"
            )
        if self.total is not None and self.total < len(self):
            raise ValueError(f"TaskBatch.total={self.total} is below its {len(self)} tasks; pass the task count of "
                             "the whole meta-batch this shard belongs to, or None")

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.support_x, self.support_y, self.query_x, self.query_y)

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def denominator(self) -> int:
        """What the outer loss divides the summed task losses by: the whole meta-batch's task count."""
        return self.total if self.total is not None else len(self)

    def to(self, *args, **kwargs) -> TaskBatch:
        """Move every tensor (``.to`` semantics); floating dtypes only change the floating tensors."""
        def move(t: Tensor) -> Tensor:
            if not t.is_floating_point():
                kwargs_ = {k: v for k, v in kwargs.items() if k != "dtype"}
                args_ = tuple(a for a in args if not isinstance(a, torch.dtype))
                return t.to(*args_, **kwargs_)
            return t.to(*args, **kwargs)

        return self._map(move, self.total)

    def __getitem__(self, index: int | slice | Tensor) -> TaskBatch:
        """The tasks at ``index`` (a slice keeps the task dimension; an int keeps it too, with size 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index], None)

    def shard(self, rank: int, world_size: int) -> TaskBatch:
        """This rank's contiguous share of the tasks, for splitting a meta-batch across processes.

        Shares differ by at most one task: the first ``len(self) % world_size`` ranks get one more
        (25 tasks over 2 ranks: 13 and 12). A rank beyond the task count gets an empty batch. A shard's
        ``total`` is the whole batch's task count: its outer loss is its task losses' sum over that count,
        every task weighted 1/total as in the whole batch, so the shards' meta-gradients simply add up.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside 0..{world_size - 1}; pass a rank from 0 to world_size - 1")
        per, extra = divmod(len(self), world_size)
        start = rank * per + min(rank, extra)
        share = slice(start, start + per + (rank < extra))
        return self._map(lambda t: t[share], self.denominator)

    def _map(self, fn: Callable[[Tensor], Tensor], total: int | None) -> TaskBatch:
        return TaskBatch(fn(self.support_x), fn(self.support_y), fn(self.query_x), fn(self.query_y), total)

