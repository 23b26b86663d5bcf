"""The MAML paper's Ant task families (arXiv:1703.03400, section 5.3): Ant with a goal velocity, and Ant
running forward or backward.

The physics is gymnasium's ``Ant-v5`` (its ``ant.xml``, the maintained ``mujoco`` bindings): 8 actions in
[-1, 1] (gear 150), ``frame_skip`` physics steps of 0.01 s (RK4) per step (Ant-v5's 5), the start pose
perturbed by U(-0.1, 0.1) in position and 0.1 N(0, 1) in velocity. The rewards, contact cost, survival bonus
and termination are those of the original maml_rl code (cbfinn/maml_rl, ``rllab/envs/mujoco/ant_env_rand.py``
and ``ant_env_rand_direc.py``, behind rllab's ``normalize``, which maps the policy's [-1, 1] onto the motors'
range, so the control cost reads the clipped action a in [-1, 1]^8):

- :class:`AntVel`: goal velocity v ~ U[0, 3];
  reward = -|forward velocity - v| + 1 - 0.005 ||a||^2 - 0.0005 ||clip(F, -1, 1)||^2 + 0.05.
- :class:`AntDir`: direction d in {-1, +1}, each with probability 1/2 (maml_rl draws U[0, 3] and runs
  backward below 1.5); reward = d * forward velocity - 0.005 ||a||^2 - 0.0005 ||clip(F, -1, 1)||^2 + 0.05.

F is MuJoCo's ``cfrc_ext``, the external (contact) force and torque on every body (14 x 6). An episode
terminates, after the step's reward, when the state is not finite or the torso's height leaves [0.2, 1.0]
(maml_rl's ``notdone``, the same rule as Ant-v5's ``is_healthy``); its later steps carry no reward and a zero
mask, so the baseline fit and the policy-gradient and TRPO objectives skip them (``Episodes.mask``).

Where rllab's Ant differs from Ant-v5, an option gives rllab's (maml_rl's ``vendor/mujoco_models/ant.xml``
steps 0.02 s once per step, so ``frame_skip=2`` on Ant-v5's 0.01 s model runs the paper's clock):

- ``physics``: ``"v5"`` (Ant-v5's model: RK4 steps of 0.01 s, MuJoCo's default contact softness, solimp
  0.9 0.95 0.001) or ``"rllab"`` (maml_rl's ``ant.xml``: RK4 steps of 0.02 s, so ``frame_skip=1`` is the
  paper's clock, and every geom's contacts at solimp 0.8 0.8 0.01, softer and wider; solref 0.02 1 is
  MuJoCo's default in both). The bodies, joints and motors are the same in both files.

- ``observation``: ``"v5"`` (Ant-v5's 105 numbers: qpos without x and y, qvel, clip(F[1:]); F as Ant-v5
  reads it, after the step's last physics step) or ``"rllab"`` (maml_rl's 125: qpos, qvel, clip(F), the
  torso's rotation matrix and its subtree's centre of mass; F after rllab's ``forward()`` at the new state).
  The contact cost reads the same F as the observation.
- ``start_noise``: ``"uniform"`` (Ant-v5's) or ``"normal"`` (rllab's ``reset_mujoco``: the model's
  ``init_qpos``, crouched at 0.55 m with bent legs, + 0.01 N(0, 1); velocity 0.1 N(0, 1)).
- ``velocity``: ``"root"`` (Ant-v5's ``x_velocity``, the torso's x displacement over the step) or ``"com"``
  (rllab's ``get_body_comvel("torso")``, the whole ant's centre-of-mass velocity, the paper's reward).

Both recipes run rllab's MDP: the paper's figures are returns of it. ``ant-vel`` runs it on Ant-v5's physics
(``physics: v5``, ``frame_skip: 2``), where it meets the paper; ``ant-dir`` on rllab's model instead
(``physics: rllab``, ``frame_skip: 1``) and with maml_rl's step budget, on which it meta-learns faster. What
stays apart either way is today's MuJoCo (rllab's: 1.31).

A task runs two ways, as HalfCheetah's (:mod:`fastmaml.rl.locomotion`): ``make_env(task)``, a
``gymnasium.Env`` (Ant-v5 with the task's reward), and ``rollout(...)``, every trajectory of a meta-batch
stepped in lockstep by ``mujoco.rollout`` on MuJoCo's thread pool, terminated ones no longer stepped. They
agree for the first steps (tests/test_rl_ant.py); Ant-v5's own contact forces and x velocity are read from
the internals of its last RK4 physics step, so the batched path takes that step itself, one environment
at a time on each of the sampler's threads, when an option reads them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from fastmaml.threads import process_cores, split_over
from fastmaml.rl._gym import gymnasium
from fastmaml.rl.directions import Directions
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.locomotion import RESET_NOISE, RLLAB_POSITION_NOISE, START_NOISES, VELOCITIES, _mujoco, \
    model_warnings

FRAME_SKIP = 5  # Ant-v5's physics steps (0.01 s) per step; rllab's ant.xml: one step of 0.02 s
CTRL_COST = 0.5e-2  # maml_rl's ant_env_rand*: 0.5 * 1e-2 * sum((a / scaling)^2)
CONTACT_COST = 0.5e-3  # 0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)^2)
SURVIVE = 0.05  # survive_reward
VELOCITY_BONUS = 1.0  # the goal-velocity task's "+ 1.0  # make it happy, not suicidal"
HEALTHY_Z = (0.2, 1.0)  # the torso's height while the episode runs
OBSERVATIONS = ("v5", "rllab")
PHYSICS = ("v5", "rllab")
RLLAB_TIMESTEP = 0.02  # maml_rl's ant.xml: <option timestep="0.02" integrator="RK4"/>
RLLAB_SOLIMP = (0.8, 0.8, 0.01, 0.5, 2.0)  # its default geom's solimp=".8 .8 .01"; midpoint and power MuJoCo's
RLLAB_SOLREF = (0.02, 1.0)  # its default geom's solref=".02 1" (MuJoCo's default too)
DIVERGED = ("the MuJoCo simulation diverged (non-finite actions or state, or a reset state); the policy's "
            "actions are out of the model's range: lower the inner or outer step size")


@functools.lru_cache(maxsize=2)
def ant_model(physics: str = "v5"):
    """gymnasium's Ant model (``ant.xml``), compiled once, as ``physics`` says (:func:`use_physics`)."""
    mujoco, _ = _mujoco()
    path = os.path.join(os.path.dirname(gymnasium().__file__), "envs", "mujoco", "assets", "ant.xml")
    with model_warnings():
        model = mujoco.MjModel.from_xml_path(path)
    use_physics(model, physics)
    return model


def use_physics(model, physics: str) -> None:
    """Set Ant-v5's compiled ``model`` to ``physics``: ``"v5"`` leaves it as it is; ``"rllab"`` gives it
    maml_rl's time step and the contact softness of every geom (the floor's included)."""
    if physics == "rllab":
        model.opt.timestep = RLLAB_TIMESTEP
        model.geom_solimp[:] = RLLAB_SOLIMP
        model.geom_solref[:] = RLLAB_SOLREF


def probe(model, datas: list, states: np.ndarray, ctrl: np.ndarray, step: bool) -> dict[str, np.ndarray]:
    """MuJoCo on full-physics ``states`` (envs, nstate) under ``ctrl`` (envs, nu), one environment at a
    time on each scratch ``MjData`` of ``datas``, its solver started cold, so the result is a function of
    the state alone: the environments are split between them, each share on a thread of its own
    (:func:`~fastmaml.threads.split_over`; MuJoCo releases the GIL). ``step=True``: one physics step then
    ``mj_rnePostConstraint``, as Ant-v5 ends a step: ``state`` after it, ``force`` (cfrc_ext) and ``x`` (the
    torso's x position) as Ant-v5 reads them. ``step=False``: rllab's ``forward()`` at the state: ``force``,
    ``xmat`` of the torso, ``com`` and ``comvel`` of its subtree."""
    mujoco, _ = _mujoco()
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    n = states.shape[0]
    out = {"force": np.empty((n, model.nbody, 6))}
    if step:
        out.update(state=np.empty_like(states), x=np.empty(n))
    else:
        out.update(xmat=np.empty((n, 9)), com=np.empty((n, 3)), comvel=np.empty((n, 3)))

    def share(k: int, envs: range) -> None:
        data = datas[k]
        control, warmstart, force = data.ctrl, data.qacc_warmstart, data.cfrc_ext  # views, taken once
        run = mujoco.mj_step if step else mujoco.mj_forward
        for i in envs:
            mujoco.mj_setState(model, data, states[i], spec)
            control[:] = ctrl[i]
            warmstart[:] = 0
            run(model, data)
            mujoco.mj_rnePostConstraint(model, data)
            out["force"][i] = force
            if step:
                mujoco.mj_getState(model, data, out["state"][i], spec)
                out["x"][i] = data.xpos[torso, 0]
            else:
                mujoco.mj_subtreeVel(model, data)
                out["xmat"][i], out["com"][i] = data.xmat[torso], data.subtree_com[torso]
                out["comvel"][i] = data.subtree_linvel[torso]

    split_over(len(datas), n, share)
    return out


def healthy(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """(envs,) whether each episode goes on: a finite state, the torso's height within [0.2, 1.0]."""
    finite = np.isfinite(qpos).all(-1) & np.isfinite(qvel).all(-1)
    return finite & (qpos[:, 2] >= HEALTHY_Z[0]) & (qpos[:, 2] <= HEALTHY_Z[1])


def observe(observation: str, qpos: np.ndarray, qvel: np.ndarray, force: np.ndarray,
            forward: dict[str, np.ndarray] | None) -> np.ndarray:
    """(envs, 105) Ant-v5's observation or (envs, 125) rllab's; ``forward``: :func:`probe`'s rllab output."""
    clipped = np.clip(force, -1.0, 1.0)
    if observation == "v5":
        return np.concatenate([qpos[:, 2:], qvel, clipped[:, 1:].reshape(len(qpos), -1)], 1)
    assert forward is not None
    return np.concatenate([qpos, qvel, clipped.reshape(len(qpos), -1), forward["xmat"], forward["com"]], 1)


@functools.lru_cache(maxsize=1)
def _task_wrapper():
    """The wrapper class, defined once gymnasium is imported (it is an optional dependency)."""
    gym = gymnasium()

    class AntTaskEnv(gym.Wrapper):  # type: ignore[name-defined]  # gymnasium is imported lazily
        """Ant-v5 with one task's reward and, as options say, rllab's start, observation and velocity."""

        def __init__(self, env, family: _AntTasks, task: dict) -> None:
            super().__init__(env)
            self._family, self._task = family, task
            self._scratch = _mujoco()[0].MjData(env.unwrapped.model)  # probe's; the env's data stays as is
            if family.observation == "rllab":
                self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(125,), dtype=np.float64)

        def _forward(self) -> dict[str, np.ndarray] | None:
            """rllab's forward() at the current state, when an option reads it (else None)."""
            if not self._family.needs_forward:
                return None
            ant = self.env.unwrapped
            state = np.concatenate([[ant.data.time], ant.data.qpos, ant.data.qvel])[None]
            return probe(ant.model, [self._scratch], state, ant.data.ctrl[None], step=False)

        def observation(self, forward: dict[str, np.ndarray] | None = None) -> np.ndarray:
            """The observation of the current state (``forward``: :meth:`_forward`, when already computed)."""
            data = self.env.unwrapped.data
            if self._family.observation == "v5":
                return self.env.unwrapped._get_obs()
            forward = self._forward() if forward is None else forward
            assert forward is not None
            return observe("rllab", data.qpos[None], data.qvel[None], forward["force"], forward)[0]

        def reset(self, *, seed=None, options=None):
            _, info = self.env.reset(seed=seed, options=options)
            if self._family.start_noise == "normal":
                ant = self.env.unwrapped
                random = ant.np_random
                ant.set_state(ant.model.numeric("init_qpos").data + RLLAB_POSITION_NOISE * random.standard_normal(
                    ant.model.nq), RESET_NOISE * random.standard_normal(ant.model.nv))
            return self.observation(), info

        def step(self, action):
            applied = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
            _, _, terminated, truncated, info = self.env.step(applied)
            forward = self._forward()  # once per step, for the observation and the reward
            velocity, force = info["x_velocity"], self.env.unwrapped.data.cfrc_ext  # Ant-v5's
            if forward is not None:  # rllab's, where the options read them
                velocity = forward["comvel"][0, 0] if self._family.velocity == "com" else velocity
                force = force if self._family.observation == "v5" else forward["force"][0]
            reward = self._family.task_reward([self._task], np.array([velocity]), applied[None], force[None])[0]
            return self.observation(forward), float(reward), terminated, truncated, info

    return AntTaskEnv


class _AntTasks:
    """What both families share: the environments, the batched rollout, the reward by task."""

    def __init__(self, horizon: int = 200, threads: int = 0, frame_skip: int = FRAME_SKIP, observation: str = "v5",
                 start_noise: str = "uniform", velocity: str = "root", physics: str = "v5") -> None:
        if horizon < 1:
            raise ValueError(f"horizon={horizon}; an episode needs at least 1 step")
        if frame_skip < 1:
            raise ValueError(f"frame_skip={frame_skip}; use the physics steps per step: 2 on Ant-v5's 0.01 s "
                             "(the paper's 0.02 s step), 1 with physics=rllab, 5 for Ant-v5's own")
        if physics not in PHYSICS:
            raise ValueError(f"physics={physics!r}; use v5 (Ant-v5's model) or rllab (maml_rl's time step and "
                             "contact softness)")
        if threads < 0:
            raise ValueError(f"threads={threads}; use 0 (every core) or a positive count")
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation={observation!r}; use v5 (Ant-v5's 105 numbers) or rllab (the paper's 125)")
        if start_noise not in START_NOISES:
            raise ValueError(f"start_noise={start_noise!r}; use uniform (Ant-v5's) or normal (rllab's)")
        if velocity not in VELOCITIES:
            raise ValueError(f"velocity={velocity!r}; use root (Ant-v5's) or com (rllab's, the paper's)")
        self.horizon, self.frame_skip = horizon, frame_skip
        self.observation, self.start_noise, self.velocity = observation, start_noise, velocity
        self.physics = physics
        self.threads = threads or process_cores()  # 0: every core this process may use
        self._datas: list = []  # mujoco.rollout's, one per thread
        self._scratch: list = []  # probe's, one per thread

    @property
    def model(self):
        """The compiled MuJoCo model the rollout steps (``physics``'s)."""
        return ant_model(self.physics)

    @property
    def needs_step(self) -> bool:
        """Whether Ant-v5's contact forces or x velocity are read (the step's last physics step in Python)."""
        return self.observation == "v5" or self.velocity == "root"

    @property
    def needs_forward(self) -> bool:
        """Whether rllab's ``forward()`` at the new state is read (its contact forces or its velocity)."""
        return self.observation == "rllab" or self.velocity == "com"

    # -- the task: subclasses say what it is and how it is rewarded -----------------------------------

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        raise NotImplementedError

    def forward_reward(self, tasks: list[dict], velocity: np.ndarray) -> np.ndarray:
        """The task's part of the reward (envs,) for forward ``velocity`` (envs,)."""
        raise NotImplementedError

    def task_reward(self, tasks: list[dict], velocity: np.ndarray, actions: np.ndarray, force: np.ndarray
                    ) -> np.ndarray:
        """maml_rl's reward (envs,): the task's term, minus the control and contact costs, plus the survival
        bonus; ``actions`` (envs, 8) in [-1, 1], ``force`` (envs, 14, 6) MuJoCo's cfrc_ext."""
        contact = CONTACT_COST * (np.clip(force, -1.0, 1.0) ** 2).sum((-2, -1))
        return self.forward_reward(tasks, velocity) - CTRL_COST * (actions**2).sum(-1) - contact + SURVIVE

    # -- one task as a gymnasium environment ----------------------------------------------------------

    def make_env(self, task: dict):
        gym = gymnasium()
        _mujoco()
        with model_warnings():
            env = gym.make("Ant-v5", frame_skip=self.frame_skip, max_episode_steps=self.horizon)
        use_physics(env.unwrapped.model, self.physics)  # Ant-v5's dt reads the model's time step
        return _task_wrapper()(env, self, task)

    # -- every task's trajectories at once -------------------------------------------------------------

    def rollout(self, act: Callable[[Tensor], tuple[Tensor, object]], tasks: list[dict], trajectories: int,
                horizon: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
                ) -> Episodes:
        """``trajectories`` episodes of at most ``horizon`` steps for every task, all stepped together:
        ``act(obs (tasks, N, 105 or 125))`` returns the actions and the policy output behind them. A
        terminated episode is no longer stepped; its later steps have zero reward and zero mask."""
        mujoco, _ = _mujoco()
        model = self.model
        while len(self._datas) < self.threads:
            self._datas.append(mujoco.MjData(model))
            self._scratch.append(mujoco.MjData(model))
        envs, nq = len(tasks) * trajectories, model.nq
        per_env = [task for task in tasks for _ in range(trajectories)]
        state = self._start(model, envs, generator)
        x = state[:, 1].copy()  # the torso's x as Ant-v5 last read it
        force = np.zeros((envs, model.nbody, 6))  # Ant-v5's cfrc_ext after a reset; rllab's forward() below
        forward = probe(model, self._scratch, state, np.zeros((envs, model.nu)), step=False) \
            if self.needs_forward else None
        if self.observation == "rllab":
            assert forward is not None
            force = forward["force"]
        alive = np.ones(envs, dtype=bool)
        steps: list[tuple] = []
        for t in range(horizon):
            seen = observe(self.observation, state[:, 1:1 + nq], state[:, 1 + nq:], force, forward)
            obs = torch.as_tensor(seen, dtype=dtype).view(len(tasks), trajectories, -1)
            actions, output = act(obs)
            applied = np.clip(actions.detach().double().numpy().reshape(envs, -1), -1.0, 1.0)
            reward, mask = np.zeros(envs), alive.astype(np.float64)
            live = np.flatnonzero(alive)
            new, new_x, new_force, new_forward, velocity = self._step(model, state[live], x[live], applied[live], t)
            reward[live] = self.task_reward([per_env[i] for i in live], velocity, applied[live], new_force)
            state[live], x[live], force[live] = new, new_x, new_force
            if forward is not None and new_forward is not None:
                for key in forward:
                    forward[key][live] = new_forward[key]
            alive[live] = healthy(new[:, 1:1 + nq], new[:, 1 + nq:])
            steps.append((obs, actions, torch.as_tensor(reward, dtype=dtype).view(len(tasks), trajectories),
                          torch.as_tensor(mask, dtype=dtype).view(len(tasks), trajectories), output))
            if not alive.any():
                break
        while len(steps) < horizon:  # every episode ended: the rest is padding, zero reward, zero mask
            obs, actions, rewards, mask_t, output = steps[-1]
            steps.append((obs, actions, torch.zeros_like(rewards), torch.zeros_like(mask_t), output))
        return Episodes.from_steps(steps)

    def _step(self, model, state: np.ndarray, x: np.ndarray, applied: np.ndarray, t: int):
        """One environment step of the envs in ``state`` (live ones, from step ``t``): the new states, the
        torso's x as Ant-v5 reads it, the contact forces the observation and reward read, rllab's
        ``forward()`` (or None) and the reward's forward velocity."""
        _, rollout = _mujoco()
        dt = model.opt.timestep * self.frame_skip
        if not np.isfinite(applied).all():  # before MuJoCo sees them: it would print a warning and reset
            raise ValueError(DIVERGED)
        threaded = self.frame_skip - 1 if self.needs_step else self.frame_skip  # the last: probe, env by env
        new = state
        if threaded:
            control = np.repeat(applied[:, None, :], threaded, axis=1)
            states, _ = rollout.rollout(model, self._datas, state, control, nstep=threaded,
                                        persistent_pool=True)
            new = states[:, -1]
        stepped = probe(model, self._scratch, new, applied, step=True) if self.needs_step else None
        if stepped is not None:
            new = stepped["state"]
        # MuJoCo resets an unstable simulation to its start, which resets its clock: a clock behind
        # (t + 1) * dt, or a non-finite number, is a diverged simulation.
        if not np.isfinite(new).all() or not np.allclose(new[:, 0], (t + 1) * dt):
            raise ValueError(DIVERGED)
        forward = probe(model, self._scratch, new, applied, step=False) if self.needs_forward else None
        new_x = stepped["x"] if stepped is not None else new[:, 1]
        if self.velocity == "com":
            assert forward is not None
            velocity = forward["comvel"][:, 0]
        else:
            velocity = (new_x - x) / dt
        readings = stepped if self.observation == "v5" else forward
        assert readings is not None
        return new, new_x, readings["force"], forward, velocity

    def _start(self, model, envs: int, generator: torch.Generator | None) -> np.ndarray:
        """Full-physics states (time, qpos, qvel) of ``envs`` perturbed start poses, as Ant-v5 resets
        (``start_noise="uniform"``) or rllab (``"normal"``: the model's init_qpos, crouched)."""
        nq, nv = model.nq, model.nv
        if self.start_noise == "uniform":  # Ant-v5: qpos0 + U(-0.1, 0.1)
            noise_q = RESET_NOISE * (2 * torch.rand(envs, nq, generator=generator, dtype=torch.float64).numpy() - 1)
            pose = model.qpos0
        else:  # rllab: init_qpos + 0.01 N(0, 1)
            noise_q = RLLAB_POSITION_NOISE * torch.randn(envs, nq, generator=generator, dtype=torch.float64).numpy()
            pose = model.numeric("init_qpos").data
        noise_v = torch.randn(envs, nv, generator=generator, dtype=torch.float64).numpy()
        state = np.zeros((envs, 1 + nq + nv))
        state[:, 1:1 + nq] = pose + noise_q
        state[:, 1 + nq:] = RESET_NOISE * noise_v
        return state


class AntVel(_AntTasks):
    """Run at a goal velocity v ~ U[low, high] (tasks ``{"velocity": v}``; maml_rl: U[0, 3]).

    Example:
        >>> family = AntVel(horizon=5)
        >>> family.sample_tasks(2, torch.Generator().manual_seed(0))[0]["velocity"] < 3
        True
    """

    def __init__(self, low: float = 0.0, high: float = 3.0, horizon: int = 200, threads: int = 0,
                 frame_skip: int = FRAME_SKIP, observation: str = "v5", start_noise: str = "uniform",
                 velocity: str = "root", physics: str = "v5") -> None:
        if not low < high:
            raise ValueError(f"low={low}, high={high}; the velocity range needs low < high")
        super().__init__(horizon, threads, frame_skip, observation, start_noise, velocity, physics)
        self.low, self.high = low, high

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        velocities = self.low + (self.high - self.low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return [{"velocity": float(v)} for v in velocities]

    def forward_reward(self, tasks: list[dict], velocity: np.ndarray) -> np.ndarray:
        goal = np.array([task["velocity"] for task in tasks], dtype=np.float64)
        return -np.abs(velocity - goal) + VELOCITY_BONUS


class AntDir(Directions, _AntTasks):
    """Run forward (d = +1) or backward (d = -1), backward with probability ``backward`` (1/2 by default;
    :class:`~fastmaml.rl.directions.Directions`)."""

    def forward_reward(self, tasks: list[dict], velocity: np.ndarray) -> np.ndarray:
        return np.array([task["direction"] for task in tasks], dtype=np.float64) * velocity
