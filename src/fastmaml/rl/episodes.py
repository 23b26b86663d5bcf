"""Trajectories of a meta-batch of tasks as tensors with leading dimensions (tasks, trajectories, time)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from fastmaml.rl.policies import Output


@dataclass(frozen=True)
class Episodes:
    """``trajectories`` episodes of ``horizon`` steps for each task of a meta-batch (some of them padding,
    see :meth:`ran`, where a step budget gave tasks different counts).

    Attributes:
        observations: (tasks, N, T, obs_dim) the observation each action was taken in.
        actions: (tasks, N, T, action_dim) for Box actions, (tasks, N, T) for Discrete ones.
        rewards: (tasks, N, T), zero after an episode ended.
        mask: (tasks, N, T), 1 while the episode runs, 0 after it terminated.
        outputs: the sampling policy's output for every observation (detached), the "old" policy of
            TRPO's importance ratio and KL.
        advantages: (tasks, N, T), filled in by :func:`fastmaml.rl.baseline.with_advantages`.
        success: (tasks, N), 1.0 where the episode solved its task at some step, else 0.0, for families whose
            environments report it (Meta-World's ``info["success"]``, gymnasium-robotics' ``info["is_success"]``);
            None otherwise.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    outputs: Output
    advantages: Tensor | None = None
    success: Tensor | None = None

    @staticmethod
    def from_steps(steps: list[tuple], success: Tensor | None = None) -> Episodes:
        """From per-step tuples ``(obs, actions, rewards, mask, output)``, each with leading (tasks, N), and the
        episodes' ``success`` where the environments report it."""
        obs, actions, rewards, mask, outputs = zip(*steps)
        output: Output
        if isinstance(outputs[0], (tuple, list)):
            means, log_stds = zip(*outputs)
            output = torch.stack(means, 2).detach(), torch.stack(log_stds, 2).detach()
        else:
            output = torch.stack(outputs, 2).detach()
        return Episodes(torch.stack(obs, 2), torch.stack(actions, 2).detach(), torch.stack(rewards, 2),
                        torch.stack(mask, 2), output, success=success)

    @staticmethod
    def cat(parts: list[Episodes], dim: int) -> Episodes:
        """Episodes joined along ``dim`` (1: more trajectories per task)."""
        def join(values):
            if any(value is None for value in values):  # success: only where every part has it
                return None
            if isinstance(values[0], tuple):
                return tuple(torch.cat(column, dim) for column in zip(*values))
            return torch.cat(values, dim)

        return Episodes(*(join([getattr(p, f.name) for p in parts]) for f in fields(Episodes)))

    def returns(self) -> Tensor:
        """Undiscounted return of every trajectory: (tasks, N)."""
        return self.rewards.sum(-1)

    def ran(self) -> Tensor:
        """(tasks, N): 1 for an episode that ran, 0 for a padding one (a step budget gives tasks different
        episode counts, :func:`fastmaml.rl.sampler.collect`)."""
        return self.mask[..., 0]

    def per_task_mean(self, values: Tensor) -> Tensor:
        """(tasks,) mean of per-episode ``values`` (tasks, N) over each task's episodes that ran."""
        ran = self.ran()
        if bool((ran > 0).all()):
            return values.mean(1)
        return (values * ran).sum(1) / ran.sum(1).clamp(min=1)

    def pooled_mean(self, values: Tensor) -> Tensor:
        """Mean of per-episode ``values`` (tasks, N) over every episode that ran (rllab's AverageReturn)."""
        ran = self.ran() > 0
        return values.mean() if bool(ran.all()) else values[ran].mean()

    def padded(self, keep: Tensor) -> Episodes:
        """These episodes with those where ``keep`` (tasks, N) is 0 turned into padding: zero mask, reward
        and success."""
        keep = keep.to(self.mask.dtype)
        success = self.success * keep.to(self.success.dtype) if self.success is not None else None
        return replace(self, mask=self.mask * keep.unsqueeze(-1), rewards=self.rewards * keep.unsqueeze(-1),
                       success=success)

    def task(self, i: int) -> Episodes:
        """One task's episodes, without the task dimension."""
        return Episodes(*(_index(getattr(self, f.name), i) for f in fields(self)))

    def with_advantages(self, advantages: Tensor) -> Episodes:
        return replace(self, advantages=advantages)

    def tensors(self) -> tuple:
        """(observations, actions, advantages, mask, outputs): what the per-task objectives read."""
        if self.advantages is None:
            raise ValueError("these episodes have no advantages yet; call fastmaml.rl.baseline.with_advantages")
        return self.observations, self.actions, self.advantages, self.mask, self.outputs


def _index(value, i: int):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(v[i] for v in value)
    return value[i]
