"""``MetaRL``: a policy with its inner loop, the object ``fm.load`` returns for a meta-RL run."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmaml.core.execution import Execution, TaskMapper
from fastmaml.core.inner import InnerSpec
from fastmaml.core.objective import TaskContext
from fastmaml.core.params import Params, detached
from fastmaml.core.rules import UpdateRule, sgd
from fastmaml.rl import policies
from fastmaml.rl.baseline import with_advantages
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.objectives import TRPOSurrogate, adapt_task, as_output, pg_loss, surrogate_terms, task_tensors
from fastmaml.rl.sampler import check_budget, check_fits, collect
from fastmaml.rl.trpo import FisherProduct, gauss_newton_fvp

LEARNED = "rule:"  # prefix of the inner rule's meta-learned tensors among the meta-parameters


class MetaRL(nn.Module):
    """Meta-RL with MAML (arXiv:1703.03400, section 3.2): a policy whose initialisation adapts to a task
    by ``inner_steps`` policy-gradient steps on ``trajectories`` fresh episodes each.

    Args:
        policy: any module mapping observations to ``(mean, log_std)`` (Box actions) or logits (Discrete).
        inner_lr, inner_steps, first_order: the inner loop (0.1, 1, False in the paper's 2D navigation).
        gamma, gae_lambda: discount and GAE(lambda) of the advantages (lambda=1: return minus baseline).
        trajectories, horizon: episodes sampled per inner step and their maximum length.
        budget: ``trajectories`` (that many episodes per task) or ``steps`` (``trajectories * horizon``
            steps per task in complete episodes, maml_rl's batch; :func:`~fastmaml.rl.sampler.collect`).
        normalize_advantages: standardise each task's advantages.
        execution: ``vmap``, ``loop`` or ``auto`` over the tasks of a meta-batch (the core's
            :class:`~fastmaml.core.execution.TaskMapper` decides ``auto``).
        rule: the inner update rule (default: ``sgd(inner_lr)``, the paper's vanilla policy gradient);
            a rule's meta-learned tensors (Meta-SGD's rates) are meta-trained beside the policy.

    Example:
        >>> from fastmaml.rl import GaussianPolicy
        >>> from fastmaml.rl.envs import Navigation2D
        >>> learner = MetaRL(GaussianPolicy(2, 2))
        >>> params = learner.adapt(Navigation2D(goal=(0.3, -0.2)), generator=torch.Generator().manual_seed(0))
        >>> action = learner.act(params, np.zeros(2, dtype=np.float32))
    """

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, inner_steps: int = 1, first_order: bool = False,
                 gamma: float = 0.99, gae_lambda: float = 1.0, trajectories: int = 20, horizon: int = 100,
                 normalize_advantages: bool = True, execution: Execution = "auto", rule: UpdateRule | None = None,
                 budget: str = "trajectories") -> None:
        super().__init__()
        if trajectories < 1 or horizon < 1:
            raise ValueError(f"trajectories={trajectories}, horizon={horizon}; both must be >= 1")
        if inner_steps < 0:
            raise ValueError(f"inner_steps={inner_steps}; it must be >= 0")
        check_budget(budget)
        if inner_lr < 0:
            raise ValueError(f"inner_lr={inner_lr}; it must be >= 0")
        if not 0 <= gamma <= 1 or not 0 <= gae_lambda <= 1:
            raise ValueError(f"gamma={gamma}, gae_lambda={gae_lambda}; both must lie in [0, 1]")
        self.policy = policy
        self.rule = rule if rule is not None else sgd(inner_lr)
        self.first_order = first_order
        self.mapper = TaskMapper(execution, owner=type(policy).__name__, model=policy)
        self.objective = TRPOSurrogate()
        learned = self.rule.learned(self.params())
        self.rule_state = nn.ParameterDict({_key(n): nn.Parameter(t) for n, t in learned.items()})
        self.inner_steps, self.gamma, self.gae_lambda = inner_steps, gamma, gae_lambda
        self.trajectories, self.horizon, self.normalize_advantages = trajectories, horizon, normalize_advantages
        self.budget = budget

    def params(self) -> Params:
        """The meta-learned initialisation, as the dict the functional calls take."""
        return {name: p for name, p in self.policy.named_parameters() if p.requires_grad}

    def meta_params(self) -> Params:
        """Everything the outer loop trains: the initialisation and the rule's learned tensors."""
        learned = {LEARNED + name: self.rule_state[_key(name)] for name in self.params() if _key(name) in
                   self.rule_state}
        return {**self.params(), **learned}

    def spec(self) -> InnerSpec:
        return InnerSpec(self.policy, pg_loss, self.rule, tuple(self.params()), self.first_order)

    def context(self, params: Params, steps: int) -> TaskContext:
        """The core's per-task context; ``params`` may hold the learned tensors (``meta_params``' names)."""
        policy = {n: p for n, p in params.items() if not n.startswith(LEARNED)}
        learned = {n[len(LEARNED):]: p for n, p in params.items() if n.startswith(LEARNED)}
        if not learned:
            learned = {name: self.rule_state[_key(name)] for name in policy if _key(name) in self.rule_state}
        return TaskContext(self.spec(), policy, dict(self.policy.named_buffers()), learned, steps)

    def sample(self, family, tasks: list, params: Params, generator: torch.Generator, batched: bool) -> Episodes:
        """Episodes of every task with advantages; ``batched``: ``params`` carry a leading task dimension."""
        episodes = collect(family, self.policy, params, tasks, self.trajectories, self.horizon, generator, batched,
                           budget=self.budget)
        return with_advantages(episodes, self.gamma, self.gae_lambda, self.normalize_advantages)

    def adapt_tasks(self, params: Params, train: list[Episodes]) -> Params:
        """Every task's parameters after one inner step per element of ``train``, stacked on a leading
        task dimension (no graph kept): the objective's own adaptation, mapped over the tasks."""
        ctx = self.context(detached(params), len(train))
        names = list(ctx.params)

        def per_task(*task: Tensor) -> tuple[Tensor, ...]:
            adapted = adapt_task(ctx, *task)
            return tuple(adapted[n] for n in names)

        tensors = task_tensors(train)
        self._settle_execution(*tensors[:2])
        adapted = self.mapper(per_task, *tensors)
        return {name: p.detach() for name, p in zip(names, adapted)}

    def sample_meta_batch(self, family, tasks: list, generator: torch.Generator,
                          params: Params | None = None) -> tuple[list[Episodes], Episodes]:
        """The inner loop on every task: episodes before each inner step, and after the last ("valid")."""
        params = detached(params if params is not None else self.meta_params())
        policy = {n: p for n, p in params.items() if not n.startswith(LEARNED)}
        train: list[Episodes] = []
        current, batched = policy, False
        for _ in range(self.inner_steps):
            train.append(self.sample(family, tasks, current, generator, batched))
            current, batched = self.adapt_tasks(params, train), True
        valid = self.sample(family, tasks, current, generator, batched)
        if self.mapper.execution == "auto":  # no inner step settled it (inner_steps=0)
            self._settle_execution(*task_tensors([valid]))
        return train, valid

    def _settle_execution(self, obs: Tensor, target: Tensor) -> None:
        """Settle ``execution="auto"`` on a whole task, support and query: one episode set's tensors stand
        for both (an inner step's episodes and the post-adaptation ones have the same size)."""
        if self.mapper.execution == "auto":
            self.mapper.resolve(obs, target, obs, target)

    def surrogate(self, params: Params, train: list[Episodes], valid: Episodes) -> tuple[Tensor, Tensor]:
        """Mean post-adaptation TRPO surrogate and KL, differentiable through the inner steps: the
        :class:`~fastmaml.rl.objectives.TRPOSurrogate` objective mapped over the tasks."""
        ctx = self.context(params, len(train))

        def per_task(*task: Tensor) -> tuple[Tensor, ...]:
            loss, aux = self.objective(ctx, *task)
            return (loss, *aux)

        losses, kls = self.mapper(per_task, *task_tensors(train, valid))
        return losses.mean(), kls.mean()

    def fisher(self, params: Params, train: list[Episodes], valid: Episodes) -> tuple[Tensor, FisherProduct]:
        """The mean surrogate (differentiable) and the Fisher-vector product of the mean KL at ``params``,
        both through the inner steps, from one graph of the adapted policy's outputs (trpo.py)."""
        ctx, tensors, k = self.context(params, len(train)), task_tensors(train, valid), 2 * len(train)
        outputs = self.mapper(lambda *task: self.objective.outputs(ctx, *task), *tensors)
        target, old = tensors[k + 1], as_output(tensors[k + 2:])

        def kl_of(columns: tuple[Tensor, ...]) -> Tensor:
            return surrogate_terms(as_output(columns), target, old)[1].mean()

        loss = surrogate_terms(as_output(outputs), target, old)[0].mean()
        return loss, gauss_newton_fvp(outputs, kl_of, params)

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
        start = detached(params if params is not None else self.params())
        ctx, current, supports = self.context(start, steps), start, []
        for _ in range(steps):
            episodes = self.sample(family, [None], _one_task(current), generator, batched=True)
            supports += [t[0] for t in task_tensors([episodes])]
            current = adapt_task(ctx, *supports)
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


def _key(name: str) -> str:
    # nn.ParameterDict keys may not contain dots.
    return name.replace(".", "/")


def _one_task(params: Params) -> Params:
    return {name: p.unsqueeze(0) for name, p in params.items()}
