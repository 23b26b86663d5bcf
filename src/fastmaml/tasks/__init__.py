"""Task distributions: anything with ``sample_tasks(tasks, generator) -> TaskBatch``."""

from typing import Protocol

import torch

from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodicTasks
from fastmaml.tasks.sequence import TokenSequences
from fastmaml.tasks.sinusoid import Sinusoid


class TaskDistribution(Protocol):
    """Anything with ``sample_tasks(tasks, generator) -> TaskBatch``: what ``fm.fit`` and ``fm.evaluate`` take.

    Example:
        >>> class Lines:  # y = a x, one slope a per task
        ...     def sample_tasks(self, tasks, generator):
        ...         a = torch.rand(tasks, 1, 1, generator=generator)
        ...         x = torch.rand(tasks, 20, 1, generator=generator)
        ...         return TaskBatch(x[:, :10], a * x[:, :10], x[:, 10:], a * x[:, 10:])  # 10 support, 10 query
        >>> maml = fm.fit(fm.models.MLP([1, 40, 1]), Lines(), iterations=5, progress=False)
    """

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch: ...


__all__ = ["EpisodicTasks", "Sinusoid", "TaskBatch", "TaskDistribution", "TokenSequences"]
