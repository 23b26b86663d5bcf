"""The batched step: :class:`Lockstep` runs each environment's physics as Meta-World's ``env.step`` does and
computes the observations, rewards and success of every environment of a skill at once."""

from __future__ import annotations

import numpy as np

from fastmaml.rl.sawyer.rewards import State
from fastmaml.rl.sawyer.shaping import norm
from fastmaml.rl.sawyer.skills import CONSTANTS, SKILLS, Object, Read
from fastmaml.threads import split_over

_OBJECT_TYPES = {"xpos": "BODY", "xquat": "BODY", "geom_xpos": "GEOM", "geom_xmat": "GEOM", "site_xpos": "SITE",
                 "site_xmat": "SITE", "qpos": "JOINT"}


def batched(env, skill: str) -> bool:
    """Whether :class:`Lockstep` computes ``skill``'s observations and rewards itself (a skill of :data:`SKILLS`
    with Meta-World's v2 rewards, the default), rather than calling ``env.step``."""
    return skill in SKILLS and getattr(env, "reward_function_version", None) == "v2"


def _plan(mujoco, model, reads: list[Read]) -> tuple[list[tuple[str, np.ndarray]], dict[str, dict[str, int]]]:
    """Per MjData field, the rows a step reads (a joint's: its ``qpos`` address), and each name's column."""
    names: dict[str, list[str]] = {}
    for field, name in reads:
        names.setdefault(field, []).append(name)
    plan = []
    for field, fields_names in names.items():
        kind = getattr(mujoco.mjtObj, f"mjOBJ_{_OBJECT_TYPES[field]}")
        ids = np.array([mujoco.mj_name2id(model, kind, name) for name in fields_names])
        if (ids < 0).any():
            raise ValueError(f"the Meta-World model has no {_OBJECT_TYPES[field].lower()} "
                             f"{fields_names[int(np.argmin(ids))]}; install the metaworld version the extra pins: "
                             "pip install 'fastmaml[metaworld]'")
        plan.append((field, model.jnt_qposadr[ids] if field == "qpos" else ids))
    return plan, {field: {name: i for i, name in enumerate(group)} for field, group in names.items()}


class Lockstep:
    """Meta-World environments stepped together: ``reset()`` then ``step(actions)`` for all of them at once.

    ``skills[i]`` names ``envs[i]``'s skill (``"reach-v3"``); each skill with a batched reward here is stepped as
    one group, any other environment through its own ``env.step``. With ``threads`` > 1, a group's physics is
    split over that many threads (one pool per process): the bindings release the interpreter lock inside
    ``mj_step``, and each environment's simulation is its own, so the result does not depend on the threads.

    ``datas``, when given, is the ``MjData`` each entry simulates in place of ``envs[i].data``: an environment
    may then appear several times, each time with its own copy of the simulation (a task's episodes side by
    side; every skill must be batched). The environment's own reset sets each copy's start. A ``Lockstep``
    serves the tasks its environments hold when it is built: after ``env.set_task``, build a new one.
    """

    def __init__(self, envs: list, skills: list[str], threads: int = 1, datas: list | None = None) -> None:
        import mujoco

        self.envs, self._mujoco, self.threads = envs, mujoco, threads
        self.datas = [env.data for env in envs] if datas is None else datas
        self.groups: dict[str, list[int]] = {}
        self.others: list[int] = []
        for i, (env, skill) in enumerate(zip(envs, skills)):
            if batched(env, skill):
                self.groups.setdefault(skill, []).append(i)
            else:
                self.others.append(i)
        if len({id(data) for data in self.datas}) < len(self.datas):
            raise ValueError("an environment appears twice; give each entry its own simulation (datas)")
        if datas is not None and self.others:
            raise ValueError(f"{skills[self.others[0]]} steps through Meta-World's env.step, which simulates the "
                             f"environment's own data; give datas only for the batched skills ({', '.join(SKILLS)})")
        # per skill: what a step reads (one XML per skill: the same names and ids in every copy), into arrays
        # kept for every step, (envs, names, ...) per MjData field
        self._plans: dict[str, list[tuple[str, np.ndarray]]] = {}
        self._reads: dict[str, dict[str, np.ndarray]] = {}
        self._index: dict[str, dict[str, dict[str, int]]] = {}
        for skill, members in self.groups.items():
            env = envs[members[0]]
            self._plans[skill], self._index[skill] = _plan(mujoco, env.model, SKILLS[skill].all_reads())
            self._reads[skill] = {field: np.empty((len(members), len(rows), *getattr(env.data, field).shape[1:]))
                                  for field, rows in self._plans[skill]}
        self._episode: dict[str, dict] = {}
        self._start: dict[int, tuple[np.ndarray, np.ndarray]] | None = None  # per batched entry

    def reset(self) -> np.ndarray:
        """Every environment's ``env.reset()`` observation, (envs, 39).

        A Meta-World reset is deterministic given the task and costs a fifth of a 500-step episode's physics (it
        moves the hand to its start twice, 250 ``mj_step`` each), so a batched environment is reset once (once
        for all its copies) and its later resets restore the state that one left (``mj_setState``: MuJoCo's
        whole integration state) and its observation."""
        mujoco, spec = self._mujoco, self._mujoco.mjtState.mjSTATE_INTEGRATION
        obs = np.empty((len(self.envs), 39))
        for i in self.others:
            obs[i] = self.envs[i].reset()[0]
        if self._start is None:
            self._start, first = {}, {}  # first: per environment, its reset's state and observation
            for members in self.groups.values():
                for i in members:
                    env = self.envs[i]
                    if id(env) not in first:
                        state = np.empty(mujoco.mj_stateSize(env.model, spec))
                        observation = env.reset()[0]
                        mujoco.mj_getState(env.model, env.data, state, spec)
                        first[id(env)] = (state, observation)
                    self._start[i] = first[id(env)]
        for i, (state, observation) in self._start.items():
            mujoco.mj_setState(self.envs[i].model, self.datas[i], state, spec)
            obs[i] = observation
        for skill, members in self.groups.items():
            envs = [self.envs[i] for i in members]
            space = [env.sawyer_observation_space for env in envs]
            self._episode[skill] = {
                "constants": {name: np.stack([np.asarray(getattr(env, name), dtype=np.float64) for env in envs])
                              for name in CONSTANTS + SKILLS[skill].constants},
                "action_scale": np.array([env.action_scale for env in envs])[:, None],
                "mocap_low": np.stack([env.mocap_low for env in envs]),
                "mocap_high": np.stack([env.mocap_high for env in envs]),
                "prev": np.stack([env._prev_obs for env in envs]),  # (envs, 18), unclipped, as the env keeps it
                "goal_seen": np.array([not env._partially_observable for env in envs])[:, None],
                "low": np.stack([s.low for s in space]), "high": np.stack([s.high for s in space])}
        return obs

    def times(self) -> np.ndarray:
        """Each simulation's clock; MuJoCo resets a diverged simulation, and its clock with it."""
        return np.array([data.time for data in self.datas])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every environment one step on ``actions`` (envs, 4) in [-1, 1]: observations (envs, 39), rewards
        (envs,) and success (envs,) as ``env.step`` and its ``info["success"]`` give them."""
        obs = np.empty((len(self.envs), 39))
        rewards, success = np.empty(len(self.envs)), np.empty(len(self.envs), dtype=bool)
        for i in self.others:
            obs[i], rewards[i], _, _, info = self.envs[i].step(actions[i])
            success[i] = bool(info["success"])
        for skill, members in self.groups.items():
            obs[members], rewards[members], success[members] = self._step_group(skill, members, actions[members])
        return obs, rewards, success

    def _step_group(self, skill: str, members: list[int], actions: np.ndarray):
        envs, datas, episode = [self.envs[i] for i in members], [self.datas[i] for i in members], self._episode[skill]
        n, reads = len(envs), self._reads[skill]
        # SawyerXYZEnv.set_xyz_action over the group: the mocap moved by the action, clipped to the hand's range
        move = np.clip(actions[:, :3], -1, 1) * episode["action_scale"]  # the gripper's action is used raw, as there
        mocap = np.stack([data.mocap_pos for data in datas]) + move[:, None]
        mocap[:, 0] = np.clip(mocap[:, 0], episode["mocap_low"], episode["mocap_high"])

        def simulate(_: int, chunk: range) -> None:  # then do_simulation and the step's mj_forward, env by env
            self._simulate(envs, datas, chunk, mocap, actions[:, -1], self._plans[skill], reads)

        split_over(self.threads, n, simulate)
        spec, constants = SKILLS[skill], episode["constants"]
        state = State(reads, self._index[skill], constants, constants["_target_pos"])
        if spec.live_target:
            state.target = state.read("site_xpos", spec.live_target)
        obs = self._observe(state, spec.objects, episode)
        rewards, success = spec.reward(state, obs, actions)
        return obs, rewards, success

    def _simulate(self, envs: list, datas: list, chunk: range, mocap: np.ndarray, grip: np.ndarray,
                  plan: list[tuple[str, np.ndarray]], reads: dict[str, np.ndarray]) -> None:
        mujoco = self._mujoco
        for k in chunk:
            env, data = envs[k], datas[k]
            data.mocap_pos[:] = mocap[k]
            data.mocap_quat[:] = (1.0, 0.0, 1.0, 0.0)
            data.ctrl[:] = (grip[k], -grip[k])
            mujoco.mj_step(env.model, data, nstep=env.frame_skip)
            mujoco.mj_forward(env.model, data)  # as the step does: it sets the next step's solver warm start
            for field, rows in plan:
                reads[field][k] = getattr(data, field)[rows]

    @staticmethod
    def _observe(s: State, objects: tuple[Object, ...], episode: dict) -> np.ndarray:
        """``SawyerXYZEnv._get_obs`` then the step's clip: hand, gripper opening, the objects' positions and
        quaternions (zeros after, to room for 2), the previous step's 18, the goal (zeros when hidden)."""
        fingers = s.read("xpos", "rightclaw") - s.read("xpos", "leftclaw")
        gripper = np.clip(norm(fingers) / 0.1, 0.0, 1.0)
        n = len(gripper)
        current = np.concatenate([s.read("xpos", "hand"), gripper[:, None], *(obj.observe(s) for obj in objects),
                                  np.zeros((n, 7 * (2 - len(objects))))], axis=1)
        goal = np.where(episode["goal_seen"], s.target, 0.0)
        obs = np.concatenate([current, episode["prev"], goal], axis=1)
        episode["prev"] = current
        return np.clip(obs, episode["low"], episode["high"])
