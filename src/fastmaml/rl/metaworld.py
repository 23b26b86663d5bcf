"""Meta-World (Yu et al. 2019, arXiv:1910.10897) as task families: ML1 (one manipulation skill, the goal and
object positions vary) and ML10 (ten skills to meta-train on, five new ones at meta-test), on Farama's
``metaworld`` package (gymnasium API, the maintained ``mujoco`` bindings); the ``metaworld`` extra.

The tasks are the benchmark's own: ``metaworld.ML1(name, seed)`` and ``metaworld.ML10(seed)`` build 50 goal
variations per skill for training and, separately, for testing (ML1: the same skill, other goals; ML10: the five
held-out skills). :meth:`sample_tasks` draws from the training set, :meth:`sample_test_tasks` (what
``fastmaml eval`` draws from) from the test set. ``seed`` fixes the benchmark's variations (0 by default), so a
run, its resume and its evaluation see the same ones.

Episodes last ``horizon`` steps (the benchmark's ``max_path_length``, 500, by default). A Meta-World environment
never terminates; its ``info["success"]`` says whether the task is solved at that step, and an episode counts
as a success when it was solved at any step: what the package's own evaluation computes
(``metaworld/evaluation.py`` ends each evaluation episode at its first success and counts it).

A task runs two ways. ``make_env(task)`` is a ``gymnasium.Env`` (Meta-World's own environment with the task set,
its episode cut at ``horizon``). :meth:`~_MetaWorldTasks.rollout`, which the sampler prefers, keeps one
environment per task of the meta-batch and steps them in lockstep in this process, one policy evaluation per time
step for the whole meta-batch, and returns each episode's success beside its return: no worker processes, so
nothing to hang. :class:`~fastmaml.rl.sawyer.Lockstep` steps them: ML10's fifteen skills (ML1 reach, push,
pick-place among them) with their observations and rewards computed over all of a skill's environments at once
(6x gymnasium's ``SyncVectorEnv`` on push and pick-place, 2.8x on reach, 3.0x on ML10's mixed meta-batch:
benchmarks/metaworld_sampler.py), any other skill through its own step.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fastmaml.threads import process_cores
from fastmaml.rl._gym import gymnasium
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.sawyer import Lockstep, batched

HORIZON = 500  # Meta-World's max_path_length
SPLITS = ("train", "test")
INSTALL = "pip install 'fastmaml[metaworld]' (in a checkout: pip install -e '.[metaworld]')"
DIVERGED = ("the Meta-World simulation diverged (non-finite actions or observations, or a reset state); the "
            "policy's actions are out of the model's range: lower the inner or outer step size")


def _metaworld():
    try:
        import metaworld
    except ImportError:
        raise ImportError(f"the Meta-World task families need the metaworld package (the metaworld extra): {INSTALL}") \
            from None
    return metaworld


@functools.lru_cache(maxsize=4)
def benchmark(name: str, seed: int):
    """The benchmark ``metaworld.ML1(name, seed)`` (``name`` a skill) or ``metaworld.ML10(seed)`` (``name="ML10"``),
    built once per process (ML10 resets each of its 15 skills 50 times to draw its goals: seconds)."""
    metaworld = _metaworld()
    return metaworld.ML10(seed=seed) if name == "ML10" else metaworld.ML1(name, seed=seed)


def skill_names() -> list[str]:
    """Every Meta-World skill ML1 accepts (``reach-v3``, ``push-v3``, ``pick-place-v3``, ...)."""
    return list(_metaworld().ML1.ENV_NAMES)


SuccessEpisodes = Episodes  # fastmaml 0.2's name for episodes with success; Episodes carries it now


class _MetaWorldTasks:
    """What ML1 and ML10 share: the benchmark's task sets, one environment per task, the lockstep rollout.

    Tasks are ``{"skill": name, "split": "train" | "test", "index": i}``, ``i`` the position in the benchmark's
    ``train_tasks`` or ``test_tasks``.
    """

    def __init__(self, name: str, horizon: int, seed: int, threads: int) -> None:
        if not 1 <= horizon <= HORIZON:
            raise ValueError(f"horizon={horizon}; use 1 to {HORIZON} steps (Meta-World's max_path_length)")
        if threads < 0:
            raise ValueError(f"threads={threads}; use 0 (every core) or a positive count")
        self.horizon, self.seed = horizon, seed
        self.threads = threads or process_cores()  # 0: every core this process may use
        self.benchmark = benchmark(name, seed)
        self._pool: dict[str, list] = {}  # per skill: environments, reused across rollouts (~0.14 s, ~25 MB each)
        self._datas: dict[int, list] = {}  # per pooled environment: copies of its simulation

    def tasks(self, split: str) -> list[dict]:
        """The benchmark's whole ``split`` set, in its order."""
        source = self.benchmark.train_tasks if split == "train" else self.benchmark.test_tasks
        return [{"skill": task.env_name, "split": split, "index": i} for i, task in enumerate(source)]

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        """``n`` training tasks, spread evenly over the skills (ML10: 20 tasks are 2 of each of its 10, as
        garage's ``MetaWorldTaskSampler`` draws them), the variations of a skill distinct while it has enough."""
        return self._draw("train", n, generator)

    def sample_test_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        """``n`` meta-test tasks, drawn as :meth:`sample_tasks` draws, from the benchmark's test set."""
        return self._draw("test", n, generator)

    def _draw(self, split: str, n: int, generator: torch.Generator) -> list[dict]:
        by_skill: dict[str, list[dict]] = {}
        for task in self.tasks(split):
            by_skill.setdefault(task["skill"], []).append(task)
        skills = list(by_skill)
        turn = torch.randperm(len(skills), generator=generator).tolist()  # the skills taking the n % k extra ones
        orders = {skill: torch.randperm(len(tasks), generator=generator).tolist() for skill, tasks in by_skill.items()}
        drawn = []
        for j in range(n):
            skill = skills[turn[j % len(skills)]]
            variations = by_skill[skill]
            drawn.append(variations[orders[skill][(j // len(skills)) % len(variations)]])
        return drawn

    def _task(self, task: dict):
        source = self.benchmark.train_tasks if task["split"] == "train" else self.benchmark.test_tasks
        return source[task["index"]]

    def _classes(self, split: str) -> dict:
        return self.benchmark.train_classes if split == "train" else self.benchmark.test_classes

    def make_env(self, task: dict):
        """Meta-World's environment with ``task`` set, its episodes cut at ``horizon`` steps."""
        env = self._classes(task["split"])[task["skill"]]()
        env.set_task(self._task(task))
        return gymnasium().wrappers.TimeLimit(env, self.horizon)

    def _envs(self, tasks: list[dict]) -> list:
        """An environment of each task's skill with the task set, reusing those built for earlier rollouts."""
        envs: list = []
        used: dict[str, int] = {}  # per skill: how many of its environments this batch has taken
        for task in tasks:
            k = used[task["skill"]] = used.get(task["skill"], -1) + 1
            pool = self._pool.setdefault(task["skill"], [])
            if k == len(pool):
                pool.append(self._classes(task["split"])[task["skill"]]())
            env = pool[k]
            env.set_task(self._task(task))
            envs.append(env)
        return envs

    def rollout(self, act, tasks: list[dict], trajectories: int, horizon: int, dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None) -> Episodes:
        """``trajectories`` episodes of ``horizon`` steps for every task, every task stepped in lockstep;
        ``act(obs (tasks, N, 39))`` returns the actions and the policy output behind them
        (:class:`~fastmaml.rl.sawyer.Lockstep` steps the environments). Where every task's skill is batched
        (:data:`~fastmaml.rl.sawyer.SKILLS`: ML10's), a task's episodes run side by side on copies of its simulation
        (N = ``trajectories``, one policy evaluation per step for them all); otherwise one after another (N = 1). A
        Meta-World reset is deterministic given the task, so ``generator`` (the sampler's) is not needed here."""
        envs, skills = self._envs(tasks), [task["skill"] for task in tasks]
        if trajectories > 1 and all(batched(env, skill) for env, skill in zip(envs, skills)):
            copies = [env for env in envs for _ in range(trajectories)]
            lockstep = Lockstep(copies, [s for s in skills for _ in range(trajectories)], self.threads,
                                datas=[data for env in envs for data in self._copies(env, trajectories)])
            return self._episode(lockstep, act, horizon, dtype, trajectories)
        lockstep = Lockstep(envs, skills, self.threads)
        return Episodes.cat([self._episode(lockstep, act, horizon, dtype, 1) for _ in range(trajectories)], dim=1)

    def _copies(self, env, n: int) -> list:
        """``n`` simulations of ``env``'s model, kept for later rollouts (about 0.4 MB each)."""
        import mujoco

        datas = self._datas.setdefault(id(env), [])
        while len(datas) < n:
            datas.append(mujoco.MjData(env.model))
        return datas[:n]

    @staticmethod
    def _episode(lockstep: Lockstep, act, horizon: int, dtype: torch.dtype, per_task: int) -> Episodes:
        """One episode of every entry of ``lockstep``: ``per_task`` consecutive entries per task."""
        n = len(lockstep.envs)
        tasks = n // per_task
        obs = lockstep.reset()  # (tasks * per_task, 39)
        solved = np.zeros(n, dtype=bool)
        ones = torch.ones(tasks, per_task, dtype=dtype)  # no termination: every step counts
        steps = []
        for _ in range(horizon):
            obs_t = torch.tensor(obs, dtype=dtype).view(tasks, per_task, -1)  # a copy: obs is replaced below
            actions, output = act(obs_t)
            chosen = actions.detach().double().numpy().reshape(n, -1)
            if not np.isfinite(chosen).all():  # before MuJoCo sees them: it would warn and reset
                raise ValueError(DIVERGED)
            before = lockstep.times()
            obs, rewards, success = lockstep.step(np.clip(chosen, -1.0, 1.0))  # the log-prob is of the raw sample
            # MuJoCo resets an unstable simulation, which resets its clock
            if (lockstep.times() <= before).any() or not np.isfinite(obs).all():
                raise ValueError(DIVERGED)
            solved |= success
            steps.append((obs_t, actions, torch.as_tensor(rewards, dtype=dtype).view(tasks, per_task), ones, output))
        return Episodes.from_steps(steps, torch.as_tensor(solved, dtype=dtype).view(tasks, per_task))


def _skill(name: str) -> str:
    """``reach``, ``reach-v3`` -> ``reach-v3``; an unknown skill is a one-line error listing the valid ones."""
    valid = skill_names()
    full = name if name.endswith("-v3") else f"{name}-v3"
    if full not in valid:
        short = ", ".join(v.removesuffix("-v3") for v in valid)
        raise ValueError(f"task={name!r} is not a Meta-World skill; use one of {short}")
    return full


class ML1(_MetaWorldTasks):
    """ML1: one skill (``task``: ``reach``, ``push``, ``pick-place``, or any Meta-World skill), 50 goal
    variations to meta-train on and 50 other ones to meta-test on. ``threads``: how many threads step the
    physics of the batched skills (0: every core; :class:`~fastmaml.rl.sawyer.Lockstep`).

    Example:
        >>> family = ML1("reach", horizon=20)  # the metaworld extra  # doctest: +SKIP
        >>> family.sample_tasks(2, torch.Generator().manual_seed(0))[0]["skill"]  # doctest: +SKIP
        'reach-v3'
    """

    def __init__(self, task: str = "pick-place", horizon: int = HORIZON, seed: int = 0, threads: int = 0) -> None:
        super().__init__(_skill(task), horizon, seed, threads)


class ML10(_MetaWorldTasks):
    """ML10: 10 skills to meta-train on (50 goal variations each), 5 held-out skills to meta-test on;
    ``threads`` as for :class:`ML1`."""

    def __init__(self, horizon: int = HORIZON, seed: int = 0, threads: int = 0) -> None:
        super().__init__("ML10", horizon, seed, threads)
