"""2D navigation (Finn et al. 2017, section 5.3; cbfinn/maml_rl ``point_env_randgoal``): a gymnasium
environment for one goal, the task family over goals, and a batched pure-torch path that steps every
task's trajectories as one tensor operation.

A point starts at the origin; an action moves it by the action clipped to [-0.1, 0.1]^2; the reward is
minus the distance to the goal after the move; an episode ends after ``horizon`` steps (100), or earlier
when the point is within 0.01 of the goal in both coordinates (as in maml_rl and pytorch-maml-rl).

``normalized_actions=True`` is the paper's own MDP: cbfinn/maml_rl runs the point environment through
rllab's ``normalize``, so the policy acts in [-1, 1]^2 and the move is 0.1 times the action clipped to it
(a unit-variance action noise then spans the move's range, where the raw MDP's spans ten times it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from fastmaml.rl._gym import gymnasium
from fastmaml.rl.episodes import Episodes

_gym = gymnasium()
MAX_ACTION = 0.1
GOAL_TOLERANCE = 0.01


class Navigation2D(_gym.Env):  # type: ignore[name-defined]  # gymnasium is imported lazily (the rl extra)
    """One 2D-navigation task, a ``gymnasium.Env``: observation = position (2,), start at the origin.

    Args:
        goal: the goal position; ``None`` draws one from U[-0.5, 0.5]^2 at each ``reset`` (seeded by
            ``reset(seed=...)``).
        horizon: steps per episode (the episode is truncated after them).
        normalized_actions: actions in [-1, 1]^2, the move 0.1 times the clipped action (rllab's
            ``normalize``, the paper's MDP); else the move is the action clipped to [-0.1, 0.1]^2.

    Example:
        >>> env = Navigation2D(goal=(0.3, -0.2))
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(np.array([0.1, -0.1]))
    """

    metadata: dict[str, list[str]] = {"render_modes": []}

    def __init__(self, goal: tuple[float, float] | None = None, horizon: int = 100,
                 normalized_actions: bool = False) -> None:
        if horizon < 1:
            raise ValueError(f"horizon={horizon}; an episode needs at least 1 step")
        self.observation_space = _gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.bound = 1.0 if normalized_actions else MAX_ACTION
        self.action_space = _gym.spaces.Box(-self.bound, self.bound, shape=(2,), dtype=np.float32)
        self.fixed_goal = None if goal is None else np.asarray(goal, dtype=np.float64).reshape(2)
        self.goal = self.fixed_goal
        self.horizon = horizon
        self._position = np.zeros(2)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.goal = self.fixed_goal if self.fixed_goal is not None else self.np_random.uniform(-0.5, 0.5, 2)
        self._position = np.zeros(2)
        self._t = 0
        return self._position.astype(np.float32), {"goal": self.goal.copy()}

    def step(self, action):
        move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -self.bound, self.bound)
        move = move * (MAX_ACTION / self.bound)
        goal = self.goal
        if goal is None:
            raise RuntimeError("Navigation2D.step() before reset(); call env.reset() first")
        self._position = self._position + move
        offset = self._position - goal
        reward = -float(np.sqrt((offset**2).sum()))
        terminated = bool(np.all(np.abs(offset) < GOAL_TOLERANCE))
        self._t += 1
        truncated = self._t >= self.horizon and not terminated
        return self._position.astype(np.float32), reward, terminated, truncated, {"goal": goal.copy()}


class Navigation2DTasks:
    """The task family: goals uniform in [low, high]^2; tasks are ``{"goal": (x, y)}``.

    Besides the generic ``sample_tasks`` / ``make_env`` protocol it has ``rollout``, the batched path the
    sampler prefers, and ``oracle_action``, the policy that knows the goal (the evaluation's oracle).
    """

    def __init__(self, low: float = -0.5, high: float = 0.5, horizon: int = 100,
                 normalized_actions: bool = False) -> None:
        if not low < high:
            raise ValueError(f"low={low}, high={high}; the goal range needs low < high")
        self.low, self.high, self.horizon = low, high, horizon
        self.normalized_actions = bool(normalized_actions)
        self.bound = 1.0 if self.normalized_actions else MAX_ACTION

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        goals = self.low + (self.high - self.low) * torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return [{"goal": (float(x), float(y))} for x, y in goals.tolist()]

    def make_env(self, task: dict) -> Navigation2D:
        return Navigation2D(goal=task["goal"], horizon=self.horizon, normalized_actions=self.normalized_actions)

    def oracle_action(self, tasks: list[dict], obs: Tensor) -> Tensor:
        """Move straight at the goal, as far as the action bound allows: obs ``(tasks, N, 2)``."""
        return (_goals(tasks, obs) - obs).clamp(-MAX_ACTION, MAX_ACTION) * (self.bound / MAX_ACTION)

    def rollout(self, act: Callable[[Tensor], tuple[Tensor, object]], tasks: list[dict], trajectories: int,
                horizon: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
                ) -> Episodes:
        """Every task's ``trajectories`` episodes stepped together: ``act(obs (tasks, N, 2))`` returns the
        actions and the policy output behind them (kept for the importance ratio of TRPO). Every episode
        starts at the origin, so ``generator`` (the sampler's) is not needed here."""
        goals = _goals(tasks, torch.zeros((), dtype=dtype))  # (tasks, 1, 2)
        position = torch.zeros(len(tasks), trajectories, 2, dtype=dtype)
        alive = torch.ones(len(tasks), trajectories, dtype=torch.bool)
        steps = []
        for _ in range(horizon):
            actions, output = act(position)
            moved = position + actions.clamp(-self.bound, self.bound) * (MAX_ACTION / self.bound)
            offset = moved - goals
            reward = -offset.norm(dim=-1)
            done = (offset.abs() < GOAL_TOLERANCE).all(-1)
            mask = alive.to(dtype)
            steps.append((position, actions, reward * mask, mask, output))
            position = torch.where(alive.unsqueeze(-1), moved, position)
            alive = alive & ~done
        return Episodes.from_steps(steps)


def _goals(tasks: list[dict], like: Tensor) -> Tensor:
    return torch.tensor([t["goal"] for t in tasks], dtype=like.dtype).unsqueeze(1)
