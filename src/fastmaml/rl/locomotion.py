"""MuJoCo locomotion task families of the MAML paper (arXiv:1703.03400, section 5.3): HalfCheetah with a
goal velocity, and HalfCheetah running forward or backward.

The physics is gymnasium's ``HalfCheetah-v5`` (its model file, the maintained ``mujoco`` bindings; no
mujoco-py, no old gym): 17-dimensional observations (joint positions without the x position, joint
velocities), 6 actions in [-1, 1], ``frame_skip`` physics steps of 0.01 s per step (HalfCheetah-v5's 5 by
default; the paper's rllab model steps once, 0.01 s, so its 200 steps are 2 s, not 10), the start pose
perturbed by U(-0.1, 0.1) in position and 0.1 N(0, 1) in velocity, no termination. Two options give the
paper's rllab environment instead: ``observe_com=True`` appends the torso subtree's centre of mass (rllab's
``get_body_com("torso")``; its x is the distance run) for 20 numbers, ``start_noise="normal"`` perturbs the
position by 0.01 N(0, 1) (rllab's ``reset_mujoco``), ``velocity="com"`` rewards the torso subtree's
centre-of-mass velocity (rllab's ``get_body_comvel``) instead of the root's. ``make_env`` truncates
episodes at 200 steps by default (the paper's ``max_path_length``; the recipes' ``horizon: 200`` sets
training's). The rewards are those of the original maml_rl code (cbfinn/maml_rl, ``half_cheetah_env_rand*.py``):

- :class:`HalfCheetahVel`: goal velocity v ~ U[0, 2]; reward = -|forward velocity - v| - 0.05 ||a||^2.
- :class:`HalfCheetahDir`: direction d in {-1, +1}; reward = d * forward velocity - 0.05 ||a||^2.

A task runs two ways. ``make_env(task)`` is a ``gymnasium.Env`` (HalfCheetah-v5 with the task's reward),
for a user's own code and the generic sampler. ``rollout(...)``, which the sampler prefers, steps every
trajectory of every task of a meta-batch in lockstep: one ``mujoco.rollout`` call per time step for all
of them, on MuJoCo's own thread pool (every core, no Python per environment and no worker processes, so
there is nothing to hang or die), and one policy evaluation per time step for the whole meta-batch.

Both run the same model and integrator; they differ only in the constraint solver's warm start (a
batched rollout starts each step's solve cold), which agrees to the last bit for the first steps and
then, as any chaotic system does, drifts trajectory by trajectory (tests/test_rl_locomotion.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from fastmaml.threads import process_cores
from fastmaml.rl._gym import gymnasium
from fastmaml.rl.directions import Directions
from fastmaml.rl.episodes import Episodes

FRAME_SKIP = 5  # physics steps per environment step (HalfCheetah-v5; rllab's half_cheetah.xml, the paper's: 1)
CTRL_COST = 0.05  # maml_rl's control-cost weight, both tasks
RESET_NOISE = 0.1  # HalfCheetah-v5's reset_noise_scale
VELOCITIES = ("root", "com")  # the reward's forward velocity: HalfCheetah-v5's x_velocity; rllab's centre of mass's
START_NOISES = ("uniform", "normal")  # HalfCheetah-v5's start pose; rllab's (MujocoEnv.reset_mujoco), the paper's
RLLAB_POSITION_NOISE = 0.01  # rllab: qpos0 + 0.01 N(0, 1), qvel 0.1 N(0, 1)


def _mujoco():
    try:
        import mujoco
        from mujoco import rollout
    except ImportError:
        raise ImportError("the MuJoCo task families need the mujoco bindings: pip install 'fastmaml[rl]' "
                          "(in a checkout: pip install -e '.[rl]')") from None
    return mujoco, rollout


# MuJoCo >= 3.3 deprecates an attribute of gymnasium's own half_cheetah.xml; not something a user can act on.
KNOWN_MODEL_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def model_warnings() -> Iterator[None]:
    """Compile MuJoCo models without MuJoCo printing to stderr and writing MUJOCO_LOG.TXT into the working
    folder: its warnings become Python warnings, except the known deprecation in gymnasium's model file.
    The previous handler (the user's, or MuJoCo's default) is restored afterwards."""
    mujoco, _ = _mujoco()
    previous = mujoco.get_mju_user_warning()
    caught: list[str] = []
    mujoco.set_mju_user_warning(caught.append)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in caught:
        if not message.startswith(KNOWN_MODEL_WARNINGS):
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=1)
def cheetah_model():
    """gymnasium's HalfCheetah model (``half_cheetah.xml``), compiled once."""
    mujoco, _ = _mujoco()
    path = os.path.join(os.path.dirname(gymnasium().__file__), "envs", "mujoco", "assets", "half_cheetah.xml")
    with model_warnings():
        return mujoco.MjModel.from_xml_path(path)


def torso_com(model, qpos: np.ndarray, qvel: np.ndarray | None = None, data=None) -> np.ndarray:
    """The torso subtree's centre of mass (envs, 3) for joint positions ``qpos`` (envs, nq), and with
    ``qvel`` (envs, nv) its linear velocity after it (envs, 6): MuJoCo's own ``subtree_com`` and
    ``subtree_linvel`` of the torso, the whole cheetah (rllab's ``get_body_com("torso")`` and
    ``get_body_comvel("torso")``), one environment at a time on ``data`` (a scratch ``MjData``; a few
    microseconds each)."""
    mujoco, _ = _mujoco()
    data = mujoco.MjData(model) if data is None else data
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    out = np.empty((qpos.shape[0], 3 if qvel is None else 6))
    for env, position in enumerate(qpos):
        data.qpos[:] = position
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        out[env, :3] = data.subtree_com[torso]
        if qvel is not None:
            data.qvel[:] = qvel[env]
            mujoco.mj_comVel(model, data)
            mujoco.mj_subtreeVel(model, data)
            out[env, 3:] = data.subtree_linvel[torso]
    return out


@functools.lru_cache(maxsize=1)
def _task_wrapper():
    """The wrapper class, defined once gymnasium is imported (it is an optional dependency)."""
    gym = gymnasium()

    class TaskEnv(gym.Wrapper):  # type: ignore[name-defined]  # gymnasium is imported lazily
        """HalfCheetah-v5 whose reward is ``reward(forward velocity, action)`` of one task; optionally rllab's
        start pose (``start_noise="normal"``), observation (``observe_com``: the torso subtree's centre of
        mass appended, 20 numbers) and forward velocity (``velocity="com"``: the centre of mass's)."""

        def __init__(self, env, reward: Callable[[float, np.ndarray], float], observe_com: bool = False,
                     start_noise: str = "uniform", velocity: str = "root") -> None:
            super().__init__(env)
            self._reward, self._observe_com, self._start_noise = reward, observe_com, start_noise
            self._velocity = velocity
            self._scratch = _mujoco()[0].MjData(env.unwrapped.model)  # torso_com's; the env's data stays as is
            if observe_com:
                size = env.observation_space.shape[0] + 3
                self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float64)

        def _com(self) -> np.ndarray:
            """The torso's centre of mass and its velocity when an option reads them (rllab's; else empty)."""
            if not (self._observe_com or self._velocity == "com"):
                return np.zeros(0)
            cheetah = self.env.unwrapped
            return torso_com(cheetah.model, cheetah.data.qpos[None], cheetah.data.qvel[None], self._scratch)[0]

        def observation(self, com: np.ndarray | None = None) -> np.ndarray:
            """The observation of the current state (``com``: its :meth:`_com`, when already computed)."""
            obs = self.env.unwrapped._get_obs()
            if not self._observe_com:
                return obs
            return np.concatenate([obs, (self._com() if com is None else com)[:3]])

        def reset(self, *, seed=None, options=None):
            _, info = self.env.reset(seed=seed, options=options)
            if self._start_noise == "normal":
                cheetah = self.env.unwrapped
                random = cheetah.np_random
                cheetah.set_state(cheetah.init_qpos + RLLAB_POSITION_NOISE * random.standard_normal(cheetah.model.nq),
                                  cheetah.init_qvel + RESET_NOISE * random.standard_normal(cheetah.model.nv))
            return self.observation(), info

        def step(self, action):
            _, _, terminated, truncated, info = self.env.step(action)
            com = self._com()  # once per step, for the observation and the reward
            velocity = com[3] if self._velocity == "com" else info["x_velocity"]
            reward = self._reward(float(velocity), np.asarray(action, dtype=np.float64))
            return self.observation(com), reward, terminated, truncated, info

    return TaskEnv


class _HalfCheetahTasks:
    """What both families share: the environments, the batched rollout, the reward by task."""

    def __init__(self, horizon: int = 200, threads: int = 0, frame_skip: int = FRAME_SKIP,
                 observe_com: bool = False, start_noise: str = "uniform", velocity: str = "root") -> None:
        if horizon < 1:
            raise ValueError(f"horizon={horizon}; an episode needs at least 1 step")
        if frame_skip < 1:
            raise ValueError(f"frame_skip={frame_skip}; use 1 (the paper's 0.01 s step) or more physics steps per step")
        if threads < 0:
            raise ValueError(f"threads={threads}; use 0 (every core) or a positive count")
        if start_noise not in START_NOISES:
            raise ValueError(f"start_noise={start_noise!r}; use uniform (HalfCheetah-v5's) or normal (rllab's)")
        if velocity not in VELOCITIES:
            raise ValueError(f"velocity={velocity!r}; use root (HalfCheetah-v5's) or com (rllab's, the paper's)")
        self.observe_com, self.start_noise, self.velocity = bool(observe_com), start_noise, velocity
        self.horizon = horizon
        self.threads = threads or process_cores()  # 0: every core this process may use
        self.frame_skip = frame_skip
        self._datas: list = []

    # -- the task: subclasses say what it is and how it is rewarded -----------------------------------

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        raise NotImplementedError

    def task_reward(self, tasks: list[dict], velocity: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Rewards (envs,) for forward ``velocity`` (envs,) and ``actions`` (envs, 6); ``tasks`` per env."""
        raise NotImplementedError

    # -- one task as a gymnasium environment ----------------------------------------------------------

    def make_env(self, task: dict):
        gym = gymnasium()
        _mujoco()
        with model_warnings():
            env = gym.make("HalfCheetah-v5", frame_skip=self.frame_skip, max_episode_steps=self.horizon)
        family = self

        def reward(velocity: float, action: np.ndarray) -> float:
            return float(family.task_reward([task], np.array([velocity]), action.reshape(1, -1))[0])

        return _task_wrapper()(env, reward, self.observe_com, self.start_noise, self.velocity)

    # -- every task's trajectories at once -------------------------------------------------------------

    def rollout(self, act: Callable[[Tensor], tuple[Tensor, object]], tasks: list[dict], trajectories: int,
                horizon: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
                ) -> Episodes:
        """``trajectories`` episodes of ``horizon`` steps for every task, all stepped together:
        ``act(obs (tasks, N, 17 or, with observe_com, 20))`` returns the actions and the policy output behind them."""
        mujoco, rollout = _mujoco()
        model = cheetah_model()
        while len(self._datas) < self.threads:
            self._datas.append(mujoco.MjData(model))
        envs = len(tasks) * trajectories
        per_env = [task for task in tasks for _ in range(trajectories)]
        state = self._start(model, envs, generator)
        dt = model.opt.timestep * self.frame_skip
        ones = torch.ones(len(tasks), trajectories, dtype=dtype)  # no termination: every step counts
        steps = []
        com = self._com(model, state)
        for t in range(horizon):
            # (time, x, qpos[1:], qvel): HalfCheetah-v5 observes all but the time and x; rllab adds the com
            seen = np.concatenate([state[:, 2:], com[:, :3]], 1) if self.observe_com else state[:, 2:]
            obs = torch.as_tensor(seen, dtype=dtype).view(len(tasks), trajectories, -1)
            actions, output = act(obs)
            applied = np.clip(actions.detach().double().numpy().reshape(envs, -1), -1.0, 1.0)
            control = np.repeat(applied[:, None, :], self.frame_skip, axis=1)
            states, _ = rollout.rollout(model, self._datas, state, control, nstep=self.frame_skip, persistent_pool=True)
            new_state = states[:, -1]
            # MuJoCo resets an unstable simulation to its start, which resets its clock: a clock behind
            # (t + 1) * dt, or a non-finite number, is a diverged simulation.
            if not np.isfinite(new_state).all() or not np.allclose(new_state[:, 0], (t + 1) * dt):
                raise ValueError("the MuJoCo simulation diverged (non-finite or reset state); the policy's actions "
                                 "are out of the model's range: lower the inner or outer step size")
            com = self._com(model, new_state)
            velocity = com[:, 3] if self.velocity == "com" else (new_state[:, 1] - state[:, 1]) / dt
            reward = self.task_reward(per_env, velocity, applied)
            steps.append((obs, actions, torch.as_tensor(reward, dtype=dtype).view(len(tasks), trajectories),
                          ones, output))
            state = new_state
        return Episodes.from_steps(steps)

    def _start(self, model, envs: int, generator: torch.Generator | None) -> np.ndarray:
        """Full-physics states (time, qpos, qvel) of ``envs`` perturbed start poses, as HalfCheetah-v5 resets
        (``start_noise="uniform"``) or rllab (``"normal"``)."""
        nq, nv = model.nq, model.nv
        if self.start_noise == "uniform":  # HalfCheetah-v5: U(-0.1, 0.1) in position
            noise_q = RESET_NOISE * (2 * torch.rand(envs, nq, generator=generator, dtype=torch.float64).numpy() - 1)
        else:  # rllab: 0.01 N(0, 1) in position
            noise_q = RLLAB_POSITION_NOISE * torch.randn(envs, nq, generator=generator, dtype=torch.float64).numpy()
        noise_v = torch.randn(envs, nv, generator=generator, dtype=torch.float64).numpy()
        state = np.zeros((envs, 1 + nq + nv))
        state[:, 1:1 + nq] = model.qpos0 + noise_q
        state[:, 1 + nq:] = RESET_NOISE * noise_v
        return state

    def _com(self, model, state: np.ndarray) -> np.ndarray:
        """The torso's centre of mass (and its velocity) for full-physics states, when an option reads it
        (no columns otherwise)."""
        if not (self.observe_com or self.velocity == "com"):
            return np.zeros((state.shape[0], 0))
        qpos, qvel = state[:, 1:1 + model.nq], state[:, 1 + model.nq:]
        return torso_com(model, qpos, qvel if self.velocity == "com" else None, self._datas[0])


class HalfCheetahVel(_HalfCheetahTasks):
    """Run at a goal velocity v ~ U[low, high] (tasks ``{"velocity": v}``).

    Example:
        >>> family = HalfCheetahVel(horizon=5)
        >>> family.sample_tasks(2, torch.Generator().manual_seed(0))[0]["velocity"] < 2
        True
    """

    def __init__(self, low: float = 0.0, high: float = 2.0, horizon: int = 200, threads: int = 0,
                 frame_skip: int = FRAME_SKIP, observe_com: bool = False, start_noise: str = "uniform",
                 velocity: str = "root") -> None:
        if not low < high:
            raise ValueError(f"low={low}, high={high}; the velocity range needs low < high")
        super().__init__(horizon, threads, frame_skip, observe_com, start_noise, velocity)
        self.low, self.high = low, high

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        velocities = self.low + (self.high - self.low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return [{"velocity": float(v)} for v in velocities]

    def task_reward(self, tasks: list[dict], velocity: np.ndarray, actions: np.ndarray) -> np.ndarray:
        goal = np.array([task["velocity"] for task in tasks])
        return -np.abs(velocity - goal) - CTRL_COST * (actions**2).sum(-1)


class HalfCheetahDir(Directions, _HalfCheetahTasks):
    """Run forward (d = +1) or backward (d = -1), backward with probability ``backward`` (1/2 by default;
    :class:`~fastmaml.rl.directions.Directions`)."""

    def task_reward(self, tasks: list[dict], velocity: np.ndarray, actions: np.ndarray) -> np.ndarray:
        direction = np.array([task["direction"] for task in tasks], dtype=np.float64)
        return direction * velocity - CTRL_COST * (actions**2).sum(-1)
