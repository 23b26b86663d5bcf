"""Sampling trajectories of a meta-batch of tasks with given policy parameters.

A task family is anything with ``sample_tasks(n, generator) -> list[task]`` and ``make_env(task) ->
gymnasium.Env``; a user's own family works unchanged through the generic sampler below, which keeps one
environment per task and evaluates the policy once per time step for the whole meta-batch. A family
with a ``rollout(act, tasks, trajectories, horizon, dtype, generator)`` method (the built-in
:class:`~fastmaml.rl.envs.Navigation2DTasks`, :mod:`fastmaml.rl.locomotion`) steps its environments
itself, batched.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml.core.params import Params
from fastmaml.rl import policies
from fastmaml.rl.episodes import Episodes


def policy_output(policy: nn.Module, params: Params, obs: Tensor, batched: bool) -> policies.Output:
    """The policy's output for ``obs`` (tasks, ...); ``batched``: ``params`` have a leading task dimension."""
    if not batched:
        return functional_call(policy, params, (obs,))
    return torch.func.vmap(lambda p, o: functional_call(policy, p, (o,)))(params, obs)


def sample_tasks(family, n: int, generator: torch.Generator) -> list:
    tasks = list(family.sample_tasks(n, generator))
    if len(tasks) < n:
        raise ValueError(f"the task family {type(family).__name__} yielded {len(tasks)} tasks for {n} asked; "
                         "make its sample_tasks(n, generator) return n tasks")
    return tasks[:n]


BUDGETS = ("trajectories", "steps")


def check_budget(budget: str) -> None:
    """One line naming the fix where ``budget`` is not one of :data:`BUDGETS` (the config, :class:`MetaRL` and
    :func:`collect` all check it here)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; use one of trajectories (that many episodes per task), steps "
                         "(trajectories x horizon steps per task, in as many episodes as that takes)")


def collect(family, policy: nn.Module, params: Params, tasks: list, trajectories: int, horizon: int,
            generator: torch.Generator, batched: bool = False, mean_action: bool = False,
            budget: str = "trajectories") -> Episodes:
    """``trajectories`` episodes of at most ``horizon`` steps per task, actions sampled from the policy
    (``mean_action``: its most likely action, the mean for Box actions, as an evaluation scores a policy).

    ``budget="steps"``: at least ``trajectories * horizon`` environment steps per task instead, in complete
    episodes, as maml_rl's sampler collects a batch (``fast_batch_size * max_path_length`` steps): where
    episodes end early, a task gets more of them. Tasks that ran short get more episodes, in rounds of as
    many as their shortfall would take at full length, so each ends between the budget and the budget plus
    one episode; a round runs every task's environments, and the episodes a task does not need are padding
    (:meth:`~fastmaml.rl.episodes.Episodes.ran`).
    """
    check_budget(budget)
    if trajectories < 1 or horizon < 1:
        raise ValueError(f"trajectories={trajectories}, horizon={horizon}; sample at least 1 trajectory of "
                         "at least 1 step per task")
    if not tasks:
        raise ValueError("no tasks to sample; the task family must yield at least one task")
    dtype = next(iter(params.values())).dtype

    def act(obs: Tensor) -> tuple[Tensor, policies.Output]:
        with torch.no_grad():
            # detach: a view of a parameter (the expanded log_std) still requires grad under no_grad
            output = policies.detach(policy_output(policy, params, obs, batched))
        return (policies.mode(output) if mean_action else policies.sample(output, generator)), output

    def run(count: int) -> Episodes:
        if hasattr(family, "rollout"):
            return family.rollout(act, tasks, count, horizon, dtype, generator=generator)
        return _gym_rollout(family, act, tasks, count, horizon, generator, dtype)

    episodes = run(trajectories)
    if budget == "steps":
        episodes = _fill_steps(run, episodes, trajectories * horizon, horizon)
    if not bool(episodes.rewards.isfinite().all()):
        raise ValueError(f"the environment of {type(family).__name__} returned a non-finite reward; make its "
                         "step() return finite rewards")
    return episodes


def _fill_steps(run, episodes: Episodes, budget: int, horizon: int) -> Episodes:
    """``episodes`` and more, from ``run(count)``, until every task has ``budget`` steps (see :func:`collect`)."""
    parts, steps = [episodes], episodes.mask.sum((1, 2))
    while True:
        need = torch.ceil((budget - steps).clamp(min=0) / horizon).long()  # episodes at full length
        if not bool(need.any()):
            return Episodes.cat(parts, 1) if len(parts) > 1 else episodes
        more = run(int(need.max()))
        more = more.padded(torch.arange(more.mask.shape[1]) < need.unsqueeze(1))
        parts.append(more)
        steps = steps + more.mask.sum((1, 2))


def _gym_rollout(family, act, tasks: list, trajectories: int, horizon: int, generator: torch.Generator,
                 dtype: torch.dtype) -> Episodes:
    # One environment per task; its trajectories run one after another, every task in lockstep, so the
    # policy is evaluated once per time step for the whole meta-batch.
    envs = [family.make_env(task) for task in tasks]
    seeds = torch.randint(0, 2**31 - 1, (trajectories, len(tasks)), generator=generator).tolist()
    runs = [_gym_episode(envs, act, horizon, row, dtype) for row in seeds]
    episodes = Episodes.cat([run for run, _, _ in runs], dim=1)
    if not any(reported for _, _, reported in runs):
        return episodes
    solved = np.stack([run_solved for _, run_solved, _ in runs], 1)  # (tasks, trajectories)
    return replace(episodes, success=torch.as_tensor(solved, dtype=dtype))


SUCCESS_KEYS = ("success", "is_success")  # info keys: Meta-World's, gymnasium-robotics'


def _gym_episode(envs: list, act, horizon: int, seeds: list[int], dtype: torch.dtype
                 ) -> tuple[Episodes, np.ndarray, bool]:
    """One episode per environment, in lockstep; whether each was solved (its ``info`` reported success,
    :data:`SUCCESS_KEYS`, at some step), and whether any environment reported success at all. Where one did,
    an episode whose environment never reported it counts as unsolved (some environments report it only
    when true, or only at their own end)."""
    obs = np.stack([np.asarray(env.reset(seed=s)[0], dtype=np.float64).reshape(-1) for env, s in zip(envs, seeds)])
    alive = np.ones(len(envs), dtype=bool)
    solved, reported = np.zeros(len(envs), dtype=bool), False
    steps = []
    for _ in range(horizon):
        # a copy (torch.tensor): obs is updated in place below, and as_tensor would share it at dtype float64
        obs_t = torch.tensor(obs, dtype=dtype).view(len(envs), 1, *envs[0].observation_space.shape)
        actions, output = act(obs_t)
        rewards, mask = np.zeros(len(envs)), alive.astype(np.float64)
        chosen = actions.numpy()
        for i, env in enumerate(envs):
            if alive[i]:
                new_obs, reward, terminated, truncated, info = env.step(_env_action(env, chosen[i, 0]))
                rewards[i] = reward
                success = next((info[key] for key in SUCCESS_KEYS if key in info), None)
                if success is not None:
                    reported = True
                    solved[i] |= bool(success)
                obs[i] = np.asarray(new_obs, dtype=np.float64).reshape(-1)
                alive[i] = not (terminated or truncated)
        steps.append((obs_t, actions, torch.as_tensor(rewards, dtype=dtype).view(-1, 1),
                      torch.as_tensor(mask, dtype=dtype).view(-1, 1), output))
        if not alive.any():
            break
    # steps after every episode ended are padding: zero reward, zero mask
    while len(steps) < horizon:
        obs_t, actions, rewards_t, mask_t, output = steps[-1]
        steps.append((obs_t, actions, torch.zeros_like(rewards_t), torch.zeros_like(mask_t), output))
    return Episodes.from_steps(steps), solved, reported


def _env_action(env, action: np.ndarray):
    from fastmaml.rl._gym import gymnasium

    if isinstance(env.action_space, gymnasium().spaces.Discrete):
        return int(action)
    # Box: the env gets the raw sample clipped to its bounds (the policy's log-prob is of the raw sample)
    return np.clip(action, env.action_space.low, env.action_space.high).astype(env.action_space.dtype)


def check_fits(policy: nn.Module, env) -> None:
    """Raise a one-line error when ``env``'s spaces do not fit ``policy``."""
    spaces = _spaces()
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box):
        raise ValueError(f"the env's observation space is {type(obs_space).__name__}; fastmaml's policies read "
                         "Box observations (flatten it, e.g. gymnasium.wrappers.FlattenObservation)")
    param = next(policy.parameters())
    probe = torch.zeros(1, *obs_space.shape, dtype=param.dtype, device=param.device)
    try:
        with torch.no_grad():
            output = policy(probe)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"the env's observations have shape {obs_space.shape}, which the policy cannot read "
                         f"({first}); build the policy for observations of size {math.prod(obs_space.shape)}") \
            from None
    if isinstance(action_space, spaces.Box):
        if not policies.is_gaussian(output):
            raise ValueError("the env has Box actions but the policy returns one tensor; return (mean, log_std) "
                             "or use fastmaml.rl.GaussianPolicy")
        if tuple(output[0].shape[1:]) != tuple(action_space.shape):
            raise ValueError(f"the policy gives actions of shape {tuple(output[0].shape[1:])} but the env wants "
                             f"{action_space.shape}; build the policy with action_dim={action_space.shape[-1]}")
    elif isinstance(action_space, spaces.Discrete):
        if policies.is_gaussian(output) or output.shape[-1] != action_space.n:
            raise ValueError(f"the env has {action_space.n} discrete actions; give the policy {action_space.n} "
                             "logits (fastmaml.rl.CategoricalPolicy)")
    else:
        raise ValueError(f"the env's action space is {type(action_space).__name__}; use a Box or Discrete one")


def _spaces():
    from fastmaml.rl._gym import gymnasium

    return gymnasium().spaces
