"""``MetaRL``: a policy with its inner loop, the object ``fm.load`` returns for a meta-RL run."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml.core.params import Params, detached
from fastmaml.rl import objectives, policies
from fastmaml.rl.baseline import with_advantages
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.sampler import check_fits, collect


class MetaRL(nn.Module):
    """Meta-RL with MAML (arXiv:1703.03400, section 3.2): a policy whose initialisation adapts to a task
    by ``inner_steps`` vanilla policy-gradient steps on ``trajectories`` fresh episodes each.

    Args:
        policy: any module mapping observations to ``(mean, log_std)`` (Box actions) or logits (Discrete).
        inner_lr, inner_steps, first_order: the inner loop (0.1, 1, False in the paper's 2D navigation).
        gamma, gae_lambda: discount and GAE(lambda) of the advantages (lambda=1: return minus baseline).
        trajectories, horizon: episodes sampled per inner step and their maximum length.
        normalize_advantages: standardise each task's advantages.
        execution: ``vmap``, ``loop`` or ``auto`` over the tasks of a meta-batch.

    Example:
        >>> learner = MetaRL(GaussianPolicy(2, 2))
        >>> params = learner.adapt(Navigation2D(goal=(0.3, -0.2)), generator=torch.Generator().manual_seed(0))
        >>> action = learner.act(params, np.zeros(2, dtype=np.float32))
    """

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, inner_steps: int = 1, first_order: bool = False,
                 gamma: float = 0.99, gae_lambda: float = 1.0, trajectories: int = 20, horizon: int = 100,
                 normalize_advantages: bool = True, execution: str = "auto") -> None:
        super().__init__()
        if trajectories < 1 or horizon < 1:
            raise ValueError(f"trajectories={trajectories}, horizon={horizon}; both must be >= 1")
        if inner_steps < 0:
            raise ValueError(f"inner_steps={inner_steps}; it must be >= 0")
        if not 0 <= gamma <= 1 or not 0 <= gae_lambda <= 1:
            raise ValueError(f"gamma={gamma}, gae_lambda={gae_lambda}; both must lie in [0, 1]")
        self.policy = policy
        self.spec = objectives.RLSpec(policy, inner_lr, first_order, execution)
        self.inner_steps, self.gamma, self.gae_lambda = inner_steps, gamma, gae_lambda
        self.trajectories, self.horizon, self.normalize_advantages = trajectories, horizon, normalize_advantages

    def params(self) -> Params:
        """The meta-learned initialisation, as the dict the functional calls take."""
        return {name: p for name, p in self.policy.named_parameters() if p.requires_grad}

    def sample(self, family, tasks: list, params: Params, generator: torch.Generator, batched: bool) -> Episodes:
        """Episodes of every task with advantages; ``batched``: ``params`` carry a leading task dimension."""
        episodes = collect(family, self.policy, params, tasks, self.trajectories, self.horizon, generator, batched)
        return with_advantages(episodes, self.gamma, self.gae_lambda, self.normalize_advantages)

    def sample_meta_batch(self, family, tasks: list, generator: torch.Generator,
                          params: Params | None = None) -> tuple[list[Episodes], Episodes]:
        """The inner loop on every task: episodes before each inner step, and after the last ("valid")."""
        params = detached(params if params is not None else self.params())
        train: list[Episodes] = []
        current, batched = params, False
        for _ in range(self.inner_steps):
            train.append(self.sample(family, tasks, current, generator, batched))
            current, batched = objectives.adapt_tasks(self.spec, params, train), True
        return train, self.sample(family, tasks, current, generator, batched)

    def surrogate(self, params: Params, train: list[Episodes], valid: Episodes) -> tuple[Tensor, Tensor]:
        """Mean post-adaptation TRPO surrogate and KL, differentiable through the inner steps."""
        return objectives.surrogate(self.spec, params, train, valid)

    def adapt(self, env, inner_steps: int | None = None, generator: torch.Generator | None = None,
              params: Params | None = None) -> Params:
        """Adapt to the task of ``env`` (any ``gymnasium.Env`` of one task): ``inner_steps`` policy-gradient
        steps, each on ``trajectories`` fresh episodes sampled there; ``inner_steps=0`` returns the
        initialisation. The result is detached, for ``act``.
        """
        steps = self.inner_steps if inner_steps is None else inner_steps
        if steps < 0:
            raise ValueError(f"inner_steps={steps}; it must be >= 0")
        check_fits(self.policy, env)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        family = _OneEnv(env)
        current = detached(params if params is not None else self.params())
        for _ in range(steps):
            episodes = self.sample(family, [None], _one_task(current), generator, batched=True)
            current = objectives.adapt(self.spec, current, [episodes.task(0).tensors()])
        return detached(current)

    def act(self, params: Params, obs):
        """The policy's most likely action (the mean for Box actions) for one observation.

        Returns a numpy array (an int for Discrete actions) for a numpy observation, a tensor for a tensor.
        """
        as_tensor = torch.is_tensor(obs)
        dtype = next(iter(params.values())).dtype
        x = torch.as_tensor(np.asarray(obs) if not as_tensor else obs, dtype=dtype).unsqueeze(0)
        with torch.no_grad():
            action = policies.mode(policies.detach(functional_call(self.policy, params, (x,))))[0]
        if as_tensor:
            return action
        return int(action) if action.dim() == 0 else action.numpy()


class _OneEnv:
    """A task family of one given environment (``adapt`` samples there)."""

    def __init__(self, env) -> None:
        self.env = env

    def sample_tasks(self, n: int, generator: torch.Generator) -> list:
        return [None] * n

    def make_env(self, task):
        return self.env


def _one_task(params: Params) -> Params:
    return {name: p.unsqueeze(0) for name, p in params.items()}
