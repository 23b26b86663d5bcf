"""Meta-World's ML1 skills stepped together: many Sawyer environments per call, their observations and rewards
computed as arrays over the environments instead of one Python step each.

A Meta-World step (``SawyerXYZEnv.step``) is about 10-20 % MuJoCo and the rest the benchmark's own Python: the
observation's quaternion through scipy, a scan of the contact list for the ``grasp_success`` entry of ``info``,
and reward functions of a few hundred scalar numpy operations. :class:`Lockstep` runs the same physics calls on
each environment's own ``MjData`` (the mocap move and gripper control of ``set_xyz_action``, ``frame_skip``
``mj_step``, the forward pass that refreshes positions) and computes the observation (frame-stacked, clipped to
the observation space) and the v2 reward and success of ``reach-v3``, ``push-v3`` and ``pick-place-v3`` once for
all environments of a skill. It skips what the sampler never reads (the other ``info`` entries, the contact scan
behind them). A task's first reset is Meta-World's own ``env.reset()``; its later ones restore the MuJoCo state
that one left, since a reset is deterministic per task and costs a fifth of an episode's physics.

The result is Meta-World's step to rounding: ``tests/test_rl_metaworld.py`` steps each skill both ways from the
same state with the same actions, over two episodes, and compares observations, rewards and success (1e-12);
``benchmarks/metaworld_sampler.py`` measures the speed beside gymnasium's ``SyncVectorEnv``. Skills without a
batched reward here (the other ML10 skills), or an environment built with another ``reward_function_version``,
step through Meta-World's own ``env.step``, in the same call.

The formulas are the benchmark's (``metaworld/envs/sawyer_{reach,push,pick_place}_v3.py``,
``SawyerXYZEnv._gripper_caging_reward``, ``utils/reward_utils.py``) written over a leading environment axis;
one quirk is kept: pick-place's ``init_left_pad``/``init_right_pad`` are views of the live body positions in
the benchmark's code, so its caging margins use the pads' current positions.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_VALUE_AT_MARGIN = 0.1
_LONG_TAIL_SCALE = np.sqrt(1 / _VALUE_AT_MARGIN - 1)  # reward_utils._sigmoids(..., "long_tail")
_BODIES = ("hand", "rightclaw", "leftclaw", "obj", "leftpad", "rightpad")
_SITES = ("rightEndEffector", "leftEndEffector")
HAND, RIGHT_CLAW, LEFT_CLAW, OBJ, LEFT_PAD, RIGHT_PAD = range(len(_BODIES))


def tolerance(x: np.ndarray, lower: float, upper: float, margin: np.ndarray) -> np.ndarray:
    """``reward_utils.tolerance(x, bounds=(lower, upper), margin=margin, sigmoid="long_tail")`` elementwise.

    Example:
        >>> tolerance(np.array([0.02, 0.1, 0.3]), 0, 0.05, np.array(0.25)).round(3).tolist()  # 0.1 at the margin
        [1.0, 0.735, 0.1]
    """
    in_bounds = (lower <= x) & (x <= upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(x < lower, lower - x, x - upper) / margin
        outside = np.where(margin == 0, 0.0, 1 / ((d * _LONG_TAIL_SCALE) ** 2 + 1))
    return np.where(in_bounds, 1.0, outside)


def hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``reward_utils.hamacher_product(a, b)`` elementwise: a b / (a + b - a b), 0 where that is not positive."""
    denominator = a + b - (a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (a * b) / denominator, 0.0)


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x * x).sum(-1))


@dataclass
class State:
    """One step's positions of every environment of a skill, (envs, 3) each, and the episode's constants."""

    bodies: np.ndarray  # (envs, len(_BODIES), 3): xpos
    tcp: np.ndarray  # the two fingers' end-effector sites' midpoint, SawyerMocapBase.tcp_center
    target: np.ndarray  # env._target_pos
    obj_init: np.ndarray  # env.obj_init_pos
    init_tcp: np.ndarray  # env.init_tcp
    hand_init: np.ndarray  # env.hand_init_pos


def _reach(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tcp_to_target = _norm(s.tcp - s.target)
    in_place = tolerance(tcp_to_target, 0, 0.05, _norm(s.hand_init - s.target))
    return 10 * in_place, tcp_to_target <= 0.05


def _gripped(caging: np.ndarray, action: np.ndarray) -> np.ndarray:
    """What both caging rewards end with: the gripper's closing counts once the hand cages the object (> 0.97),
    averaged with the caging (push's ``high_density``; pick-place's own)."""
    gripping = np.where(caging > 0.97, np.minimum(np.maximum(0, action[:, -1]), 1.0), 0.0)
    return (hamacher(caging, gripping) + caging) / 2


def _caging(s: State, obj: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``SawyerXYZEnv._gripper_caging_reward`` as push-v3 calls it (obj_radius 0.015, pad_success_thresh 0.05,
    xz_thresh 0.005, high_density)."""
    pad_y = s.bodies[:, [LEFT_PAD, RIGHT_PAD], 1]  # (envs, 2)
    pad_to_obj = np.abs(pad_y - obj[:, 1:2])
    margin = np.abs(np.abs(pad_y - s.obj_init[:, 1:2]) - 0.05)
    caging_y = hamacher(tolerance(pad_to_obj[:, 0], 0.015, 0.05, margin[:, 0]),
                        tolerance(pad_to_obj[:, 1], 0.015, 0.05, margin[:, 1]))
    xz = [0, 2]
    xz_margin = _norm(s.obj_init[:, xz] - s.init_tcp[:, xz]) - 0.005
    caging_xz = tolerance(_norm(s.tcp[:, xz] - obj[:, xz]), 0, 0.005, xz_margin)
    return _gripped(hamacher(caging_y, caging_xz), action)


def _push(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obj, tcp_opened = obs[:, 4:7], obs[:, 3]
    tcp_to_obj = _norm(obj - s.tcp)
    target_to_obj = _norm(obj - s.target)
    in_place = tolerance(target_to_obj, 0, 0.05, _norm(s.obj_init - s.target))
    reward = 2 * _caging(s, obj, action)
    reward = np.where((tcp_to_obj < 0.02) & (tcp_opened > 0), reward + (1.0 + reward + 5.0 * in_place), reward)
    reward = np.where(target_to_obj < 0.05, 10.0, reward)
    return reward, target_to_obj <= 0.05


def _pick_place_caging(s: State, obj: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``SawyerPickPlaceEnvV3._gripper_caging_reward``; its ``init_*_pad`` are the pads' live positions."""
    left_y, right_y = s.bodies[:, LEFT_PAD, 1], s.bodies[:, RIGHT_PAD, 1]
    right_margin = np.abs(np.abs(obj[:, 1] - right_y) - 0.05)
    left_margin = np.abs(np.abs(obj[:, 1] - left_y) - 0.05)
    y_caging = hamacher(tolerance(left_y - obj[:, 1], 0.015, 0.05, left_margin),
                        tolerance(obj[:, 1] - right_y, 0.015, 0.05, right_margin))
    y_zero = np.array([1.0, 0.0, 1.0])  # x + [0, -x_y, 0]: the y entry becomes exactly 0
    tcp_obj_xz = _norm(s.tcp * y_zero - obj * y_zero)
    xz_margin = _norm(s.obj_init * y_zero - s.init_tcp * y_zero) - 0.005
    return _gripped(hamacher(y_caging, tolerance(tcp_obj_xz, 0, 0.005, xz_margin)), action)


def _pick_place(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obj, tcp_opened = obs[:, 4:7], obs[:, 3]
    obj_to_target = _norm(obj - s.target)
    tcp_to_obj = _norm(obj - s.tcp)
    in_place = tolerance(obj_to_target, 0, 0.05, _norm(s.obj_init - s.target))
    reward = hamacher(_pick_place_caging(s, obj, action), in_place)
    lifted = (tcp_to_obj < 0.02) & (tcp_opened > 0) & (obj[:, 2] - 0.01 > s.obj_init[:, 2])
    reward = np.where(lifted, reward + (1.0 + 5.0 * in_place), reward)
    reward = np.where(obj_to_target < 0.05, 10.0, reward)
    return reward, obj_to_target <= 0.07


REWARDS = {"reach-v3": _reach, "push-v3": _push, "pick-place-v3": _pick_place}


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="fastmaml-sawyer")


def batched(env, skill: str) -> bool:
    """Whether :class:`Lockstep` computes ``skill``'s observations and rewards itself (reach, push, pick-place
    with Meta-World's v2 rewards, the default), rather than calling ``env.step``."""
    return skill in REWARDS and getattr(env, "reward_function_version", None) == "v2"


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
                             "environment's own data; give datas only for reach, push and pick-place")
        self._ids = {}
        for skill, members in self.groups.items():
            m = envs[members[0]].model  # one XML per skill: the same names and ids in every copy
            self._ids[skill] = (
                [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name) for name in _BODIES],
                [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name) for name in _SITES],
                mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "objGeom"))
        self._episode: dict[str, dict[str, np.ndarray]] = {}
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
                "target": np.stack([env._target_pos for env in envs]),
                "obj_init": np.stack([env.obj_init_pos for env in envs]),
                "init_tcp": np.stack([env.init_tcp for env in envs]),
                "hand_init": np.stack([env.hand_init_pos for env in envs]),
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
        n = len(envs)
        positions = np.empty((n, len(_BODIES), 3)), np.empty((n, 2, 3)), np.empty((n, 9))  # bodies, sites, xmat
        # SawyerXYZEnv.set_xyz_action over the group: the mocap moved by the action, clipped to the hand's range
        move = np.clip(actions[:, :3], -1, 1) * episode["action_scale"]  # the gripper's action is used raw, as there
        mocap = np.stack([data.mocap_pos for data in datas]) + move[:, None]
        mocap[:, 0] = np.clip(mocap[:, 0], episode["mocap_low"], episode["mocap_high"])

        def simulate(chunk: range) -> None:  # then do_simulation and the step's mj_forward, environment by environment
            self._simulate(envs, datas, chunk, mocap, actions[:, -1], self._ids[skill], positions)

        if self.threads == 1 or n == 1:
            simulate(range(n))
        else:
            bounds = np.linspace(0, n, min(n, self.threads) + 1).astype(int)
            list(_pool(self.threads).map(simulate, [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
        bodies, sites, xmat = positions
        obs = self._observe(bodies, sites, xmat, episode)
        state = State(bodies, (sites[:, 0] + sites[:, 1]) / 2.0, episode["target"], episode["obj_init"],
                      episode["init_tcp"], episode["hand_init"])
        rewards, success = REWARDS[skill](state, obs, actions)
        return obs, rewards, success

    def _simulate(self, envs: list, datas: list, chunk: range, mocap: np.ndarray, grip: np.ndarray, ids: tuple,
                  positions: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        mujoco, (body_ids, site_ids, geom_id), (bodies, sites, xmat) = self._mujoco, ids, positions
        for k in chunk:
            env, data = envs[k], datas[k]
            data.mocap_pos[:] = mocap[k]
            data.mocap_quat[:] = (1.0, 0.0, 1.0, 0.0)
            data.ctrl[:] = (grip[k], -grip[k])
            mujoco.mj_step(env.model, data, nstep=env.frame_skip)
            mujoco.mj_forward(env.model, data)  # as the step does: it sets the next step's solver warm start
            bodies[k], sites[k], xmat[k] = data.xpos[body_ids], data.site_xpos[site_ids], data.geom_xmat[geom_id]

    @staticmethod
    def _observe(bodies: np.ndarray, sites: np.ndarray, xmat: np.ndarray, episode: dict) -> np.ndarray:
        """``SawyerXYZEnv._get_obs`` then the step's clip: hand, gripper opening, object position and quaternion
        (7 zeros after: no second object), the previous step's 18, the goal (zeros when hidden)."""
        from scipy.spatial.transform import Rotation

        gripper = np.clip(_norm(bodies[:, RIGHT_CLAW] - bodies[:, LEFT_CLAW]) / 0.1, 0.0, 1.0)
        quat = Rotation.from_matrix(xmat.reshape(-1, 3, 3)).as_quat()
        current = np.concatenate([bodies[:, HAND], gripper[:, None], bodies[:, OBJ], quat,
                                  np.zeros((len(bodies), 7))], axis=1)
        goal = np.where(episode["goal_seen"], episode["target"], 0.0)
        obs = np.concatenate([current, episode["prev"], goal], axis=1)
        episode["prev"] = current
        return np.clip(obs, episode["low"], episode["high"])
