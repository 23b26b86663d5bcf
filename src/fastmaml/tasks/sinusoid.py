"""Sinusoid regression tasks exactly as in the MAML paper (arXiv:1703.03400, section 5.1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastmaml.tasks.batch import TaskBatch


class Sinusoid:
    """y = amplitude * sin(x - phase), amplitude ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5].

    Each task draws ``shots`` support and ``query_shots`` query points. The meta-train and meta-test
    splits are the same distribution; they differ by the generator (seed) the caller passes.

    Example:
        >>> tasks = Sinusoid(shots=10)
        >>> batch = tasks.sample_tasks(25, torch.Generator().manual_seed(0))
        >>> tuple(batch.support_x.shape)
        (25, 10, 1)
    """

    def __init__(
        self,
        shots: int = 10,
        query_shots: int | None = None,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if shots < 1:
            raise ValueError(f"shots={shots}; a task needs at least one support point")
        self.shots = shots
        self.query_shots = shots if query_shots is None else query_shots
        if self.query_shots < 1:
            raise ValueError(f"query_shots={self.query_shots}; a task needs at least one query point")
        self.amplitude, self.phase, self.x_range, self.dtype = amplitude, phase, x_range, dtype

    def sample_functions(self, tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Amplitudes and phases of ``tasks`` sinusoids, each (tasks,)."""
        u = torch.rand(2, tasks, generator=generator, dtype=self.dtype)
        amplitude = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amplitude, phase

    @staticmethod
    def evaluate(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """The sinusoids at ``x`` (tasks, points, 1)."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample_points(self, tasks: int, points: int, generator: torch.Generator) -> Tensor:
        low, high = self.x_range
        return low + (high - low) * torch.rand(tasks, points, 1, generator=generator, dtype=self.dtype)

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        """A meta-batch of ``tasks`` new sinusoids with support and query points."""
        amplitude, phase = self.sample_functions(tasks, generator)
        x = self.sample_points(tasks, self.shots + self.query_shots, generator)
        y = self.evaluate(amplitude, phase, x)
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
