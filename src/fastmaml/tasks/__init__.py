"""Task distributions: anything with ``sample_tasks(tasks, generator) -> TaskBatch``."""

from typing import Protocol

import torch

from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodicTasks
from fastmaml.tasks.sequence import TokenSequences
from fastmaml.tasks.sinusoid import Sinusoid


class TaskDistribution(Protocol):
    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch: ...


__all__ = ["EpisodicTasks", "Sinusoid", "TaskBatch", "TaskDistribution", "TokenSequences"]
