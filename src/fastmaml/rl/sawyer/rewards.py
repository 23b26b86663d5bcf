"""The v2 rewards and success of Meta-World's batched skills, each ``reward(state, obs, action)`` ->
``(rewards, success)`` over the environments of one skill: the benchmark's ``compute_reward`` and
``evaluate_state`` (``metaworld/envs/sawyer_<skill>_v3.py``) and ``SawyerXYZEnv._gripper_caging_reward``."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fastmaml.rl.sawyer.shaping import hamacher, norm, rect_prism, tolerance

_Y_ZERO = np.array([1.0, 0.0, 1.0])  # x * _Y_ZERO: the benchmark's x + [0, -x_y, 0], whose y entry is exactly 0


@dataclass
class State:
    """One step of every environment of a skill, over a leading environment axis: what the step read from each
    simulation (per MjData field an array (envs, names, ...), ``index[field][name]`` the name's column) and the
    episode's constants (``constants[attribute]``: the environment's attribute as its reset left it)."""

    reads: dict[str, np.ndarray]
    index: dict[str, dict[str, int]]
    constants: dict[str, np.ndarray]
    target: np.ndarray  # env._target_pos

    def read(self, field: str, name: str) -> np.ndarray:
        """``data.<field>`` of ``name`` (a body's, geom's, site's or joint's), (envs, ...)."""
        return self.reads[field][:, self.index[field][name]]

    @functools.cached_property
    def tcp(self) -> np.ndarray:
        """The two fingers' end-effector sites' midpoint, ``SawyerMocapBase.tcp_center``."""
        return (self.read("site_xpos", "rightEndEffector") + self.read("site_xpos", "leftEndEffector")) / 2.0

    @property
    def obj_init(self) -> np.ndarray:
        return self.constants["obj_init_pos"]

    @property
    def init_tcp(self) -> np.ndarray:
        return self.constants["init_tcp"]


def _closed(action: np.ndarray) -> np.ndarray:
    """How closed the action asks the gripper to be, ``min(max(0, action[-1]), 1)``."""
    return np.minimum(np.maximum(0, action[:, -1]), 1.0)


def _gripping(caging: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``_gripper_caging_reward``'s gripping: the gripper's closing counts once the hand cages the object (> 0.97)."""
    return np.where(caging > 0.97, _closed(action), 0.0)


def _gripped(caging: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``_gripper_caging_reward(..., high_density=True)``'s end: the gripping averaged with the caging (push's,
    peg-insert-side's, basketball's; pick-place's own)."""
    return (hamacher(caging, _gripping(caging, action)) + caging) / 2


def _xz_caging(s: State, obj: np.ndarray, thresh: float) -> np.ndarray:
    """The hand over the object in x and z, ``_gripper_caging_reward``'s ``caging_xz`` (every caging reward's)."""
    margin = norm(s.obj_init * _Y_ZERO - s.init_tcp * _Y_ZERO) - thresh
    return tolerance(norm(s.tcp * _Y_ZERO - obj * _Y_ZERO), 0, thresh, margin)


def _caging(s: State, obj: np.ndarray, radius: float, pad_thresh: float, xz_thresh: float) -> np.ndarray:
    """``SawyerXYZEnv._gripper_caging_reward``'s ``caging``: the pads either side of the object in y (margins from
    the object's start), the hand over it in x and z."""
    pad_y = np.stack([s.read("xpos", "leftpad")[:, 1], s.read("xpos", "rightpad")[:, 1]], axis=1)  # (envs, 2)
    pad_to_obj = np.abs(pad_y - obj[:, 1:2])
    margin = np.abs(np.abs(pad_y - s.obj_init[:, 1:2]) - pad_thresh)
    caging_y = hamacher(tolerance(pad_to_obj[:, 0], radius, pad_thresh, margin[:, 0]),
                        tolerance(pad_to_obj[:, 1], radius, pad_thresh, margin[:, 1]))
    return hamacher(caging_y, _xz_caging(s, obj, xz_thresh))


def _live_pads(s: State, obj: np.ndarray, radius: float, upper: float) -> np.ndarray:
    """The y caging of pick-place's, sweep's and sweep-into's own ``_gripper_caging_reward``: each pad's signed
    distance to the object in [radius, upper], margins from ``init_*_pad``, the pads' live positions."""
    left_y, right_y = s.read("xpos", "leftpad")[:, 1], s.read("xpos", "rightpad")[:, 1]
    right_margin = np.abs(np.abs(obj[:, 1] - right_y) - 0.05)
    left_margin = np.abs(np.abs(obj[:, 1] - left_y) - 0.05)
    return hamacher(tolerance(left_y - obj[:, 1], radius, upper, left_margin),
                    tolerance(obj[:, 1] - right_y, radius, upper, right_margin))


def _lifted(s: State, obs: np.ndarray, near: float) -> np.ndarray:
    """The pick rewards' grasp test: the hand within ``near`` of the object, the gripper open (its observed
    opening > 0), the object 1 cm above its start."""
    obj = obs[:, 4:7]
    return (norm(obj - s.tcp) < near) & (obs[:, 3] > 0) & (obj[:, 2] - 0.01 > s.obj_init[:, 2])


def reach(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerReachEnvV3.compute_reward``."""
    tcp_to_target = norm(s.tcp - s.target)
    in_place = tolerance(tcp_to_target, 0, 0.05, norm(s.constants["hand_init_pos"] - s.target))
    return 10 * in_place, tcp_to_target <= 0.05


def push(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerPushEnvV3.compute_reward``."""
    obj, tcp_opened = obs[:, 4:7], obs[:, 3]
    tcp_to_obj = norm(obj - s.tcp)
    target_to_obj = norm(obj - s.target)
    in_place = tolerance(target_to_obj, 0, 0.05, norm(s.obj_init - s.target))
    reward = 2 * _gripped(_caging(s, obj, 0.015, 0.05, 0.005), action)
    reward = np.where((tcp_to_obj < 0.02) & (tcp_opened > 0), reward + (1.0 + reward + 5.0 * in_place), reward)
    reward = np.where(target_to_obj < 0.05, 10.0, reward)
    return reward, target_to_obj <= 0.05


def pick_place(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerPickPlaceEnvV3.compute_reward`` with its own ``_gripper_caging_reward`` (live pads)."""
    obj = obs[:, 4:7]
    obj_to_target = norm(obj - s.target)
    in_place = tolerance(obj_to_target, 0, 0.05, norm(s.obj_init - s.target))
    caging = _gripped(hamacher(_live_pads(s, obj, 0.015, 0.05), _xz_caging(s, obj, 0.005)), action)
    reward = hamacher(caging, in_place)
    reward = np.where(_lifted(s, obs, 0.02), reward + (1.0 + 5.0 * in_place), reward)
    reward = np.where(obj_to_target < 0.05, 10.0, reward)
    return reward, obj_to_target <= 0.07


def door_open(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerDoorEnvV3.compute_reward`` (``_reward_grab_effort``, ``_reward_pos``) and its success."""
    theta = s.read("qpos", "doorjoint")
    grab = (np.clip(action[:, 3], -1, 1) + 1.0) / 2.0
    hand, door = obs[:, :3], obs[:, 4:7] + np.array([-0.05, 0, 0])
    radius = norm(hand[:, :2] - door[:, :2])  # a funnel around the handle the hand keeps above
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(radius <= 0.12, 0.0, 0.04 * np.log(radius - 0.12) + 0.4)
    above_floor = np.where(hand[:, 2] >= floor, 1.0, tolerance(floor - hand[:, 2], 0.0, 0.01, floor / 2.0))
    in_place = tolerance(norm(hand - door - np.array([0.05, 0.03, -0.01])), 0, 0.12 / 2.0, 0.5)
    ready_to_open = hamacher(above_floor, in_place)
    door_angle = -theta
    opened = 0.2 * (theta < -np.pi / 90.0) + 0.8 * tolerance(np.pi / 2.0 + np.pi / 6 - door_angle, 0, 0.5, np.pi / 3.0)
    success = np.abs(obs[:, 4] - s.target[:, 0]) <= 0.08
    return np.where(success, 10.0, 2.0 * hamacher(ready_to_open, grab) + 8.0 * opened), success


def drawer_close(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerDrawerCloseEnvV3.compute_reward`` and its success."""
    obj = obs[:, 4:7]
    target_to_obj = norm(obj - s.target)
    in_place = tolerance(target_to_obj, 0, 0.05, np.abs(norm(s.obj_init - s.target) - 0.05))
    tcp_to_obj_init = norm(s.obj_init - s.init_tcp)
    reach = tolerance(norm(obj - s.tcp), 0, 0.005, np.abs(tcp_to_obj_init - 0.005), "gaussian")
    reward = hamacher(hamacher(reach, _closed(action)), in_place)
    success = target_to_obj <= 0.05 + 0.015
    return np.where(success, 1.0, reward) * 10, success


def button_press_topdown(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerButtonPressTopdownEnvV3.compute_reward`` and its success."""
    obj = obs[:, 4:7]
    tcp_to_obj = norm(obj - s.tcp)
    obj_to_target = np.abs(s.target[:, 2] - obj[:, 2])
    near_button = tolerance(tcp_to_obj, 0, 0.01, norm(obj - s.init_tcp))
    button_pressed = tolerance(obj_to_target, 0, 0.005, s.constants["_obj_to_target_init"])
    reward = 5 * hamacher(1 - obs[:, 3], near_button)
    reward = np.where(tcp_to_obj <= 0.03, reward + 5 * button_pressed, reward)
    return reward, obj_to_target <= 0.024


def peg_insert_side(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerPegInsertionSideEnvV3.compute_reward`` and its success: the peg's head to the hole (y and z
    weighted twice), kept out of the box's two collision boxes."""
    obj, head, scale = obs[:, 4:7], s.read("site_xpos", "pegHead"), np.array([1.0, 2.0, 2.0])
    obj_to_target = norm((head - s.target) * scale)
    in_place_margin = norm((s.constants["peg_head_pos_init"] - s.target) * scale)
    in_place = tolerance(obj_to_target, 0, 0.07, in_place_margin)
    boxes = [rect_prism(head, s.read("site_xpos", f"bottom_right_corner_collision_box_{i}"),
                    s.read("site_xpos", f"top_left_corner_collision_box_{i}")) for i in (1, 2)]
    in_place = hamacher(in_place, hamacher(boxes[1], boxes[0]))
    lifted = _lifted(s, obs, 0.08)
    grasped = np.where(lifted, 1.0, _gripped(_caging(s, obj, 0.0075, 0.03, 0.005), action))
    reward = hamacher(grasped, in_place)
    reward = np.where(lifted, reward + (1.0 + 5 * in_place), reward)
    return np.where(obj_to_target <= 0.07, 10.0, reward), obj_to_target <= 0.07


def window_open(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerWindowOpenEnvV3.compute_reward`` and its success: the handle slid to the target in x."""
    obj = obs[:, 4:7]  # _get_pos_objects(): the observation's, unclipped
    target_to_obj = np.abs(obj[:, 0] - s.target[:, 0])
    target_to_obj_init = np.abs(s.obj_init[:, 0] - s.target[:, 0])
    in_place = tolerance(target_to_obj, 0, 0.05, np.abs(target_to_obj_init - 0.05))
    tcp_to_obj_init = norm(s.constants["window_handle_pos_init"] - s.init_tcp)
    reach = tolerance(norm(obj - s.tcp), 0, 0.02, np.abs(tcp_to_obj_init - 0.02))
    return 10 * hamacher(reach, in_place), target_to_obj <= 0.05


def _swept(s: State, obs: np.ndarray, action: np.ndarray, target: np.ndarray, grip: float, xz_thresh: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """``compute_reward`` and success of sweep and sweep-into, with their own ``_gripper_caging_reward`` (live
    pads; the gripping is the pads' closeness once the hand cages the object, > 0.95): the object (radius 0.02)
    pushed to ``target``."""
    obj = obs[:, 4:7]
    obj_to_target = norm(obj - target)
    in_place = tolerance(obj_to_target, 0, 0.05, norm(s.obj_init - target))
    caging = hamacher(_live_pads(s, obj, 0.02, 0.05), _xz_caging(s, obj, xz_thresh))
    grasped = (caging + np.where(caging > 0.95, _live_pads(s, obj, 0.02, grip), 0.0)) / 2
    reward = (2 * grasped) + (6 * hamacher(grasped, in_place))
    return np.where(obj_to_target < 0.05, 10.0, reward), obj_to_target <= 0.05


def sweep(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerSweepEnvV3.compute_reward`` and its success: the puck pushed off the table's edge."""
    return _swept(s, obs, action, s.target, 0.02 + 0.01, 0.005)


def sweep_into(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerSweepIntoGoalEnvV3.compute_reward`` and its success: the puck pushed into the hole, the target at
    the puck's own height."""
    target = np.concatenate([s.target[:, :2], obs[:, 6:7]], axis=1)
    return _swept(s, obs, action, target, 0.02 + 0.005, 0.01)


def basketball(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerBasketballEnvV3.compute_reward`` and its success: the ball above the hoop (z weighted twice)."""
    obj, scale = obs[:, 4:7], np.array([1.0, 1.0, 2.0])
    target = s.target.copy()
    target[:, 2] = 0.3
    target_to_obj = norm((obj - target) * scale)
    in_place = tolerance(target_to_obj, 0, 0.08, norm((s.obj_init - target) * scale))
    lifted = _lifted(s, obs, 0.035)
    grasped = np.where(lifted, 1.0, _gripped(_caging(s, obj, 0.025, 0.06, 0.005), action))
    reward = hamacher(grasped, in_place)
    reward = np.where(lifted, reward + (1.0 + 5.0 * in_place), reward)
    return np.where(target_to_obj < 0.08, 10.0, reward), target_to_obj <= 0.08


def drawer_open(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerDrawerOpenEnvV3.compute_reward`` and its success: the hand at the handle (x and y weighted three
    times), the handle pulled to the target."""
    gripper, handle, scale = obs[:, :3], obs[:, 4:7], np.array([3.0, 3.0, 1.0])
    max_dist = s.constants["maxDist"]
    handle_error = norm(handle - s.target)
    opening = tolerance(handle_error, 0, 0.02, max_dist)
    handle_pos_init = s.target + np.stack([np.zeros_like(max_dist), max_dist, np.zeros_like(max_dist)], axis=1)
    caging = tolerance(norm((handle - gripper) * scale), 0, 0.01, norm((handle_pos_init - s.init_tcp) * scale))
    return (caging + opening) * 5.0, handle_error <= 0.03


def door_close(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerDoorCloseEnvV3.compute_reward`` and its success."""
    obj = obs[:, 4:7]
    obj_to_target = norm(obj - s.target)
    in_place = tolerance(obj_to_target, 0, 0.05, norm(s.obj_init - s.target), "gaussian")
    hand_margin = norm(s.constants["hand_init_pos"] - obj) + 0.1
    hand_in_place = tolerance(norm(s.tcp - s.target), 0, 0.25 * 0.05, hand_margin, "gaussian")
    reward = 3 * hand_in_place + 6 * in_place
    return np.where(obj_to_target < 0.05, 10.0, reward), obj_to_target <= 0.08


def shelf_place(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerShelfPlaceEnvV3.compute_reward`` and its success: the block placed on the shelf, its placing
    reward lowered (to 0 behind the shelf) while it is under the shelf."""
    obj, target = obs[:, 4:7], s.target
    obj_to_target = norm(obj - target)
    in_place = tolerance(obj_to_target, 0, 0.05, norm(s.obj_init - target))
    caging = _caging(s, obj, 0.02, 0.05, 0.01)
    reward = hamacher(hamacher(caging, _gripping(caging, action)), in_place)
    low = (0.0 < obj[:, 2]) & (obj[:, 2] < 0.24)
    low &= (target[:, 0] - 0.15 < obj[:, 0]) & (obj[:, 0] < target[:, 0] + 0.15)
    front = target[:, 1] - 3 * 0.05
    under = low & (front < obj[:, 1]) & (obj[:, 1] < target[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        bound_loss = hamacher((obj[:, 1] - front) / (3 * 0.05), (0.24 - obj[:, 2]) / 0.24)
    in_place = np.where(under, np.clip(in_place - bound_loss, 0.0, 1.0), in_place)
    in_place = np.where(low & (obj[:, 1] > target[:, 1]), 0.0, in_place)
    reward = np.where(_lifted(s, obs, 0.025), reward + (1.0 + 5.0 * in_place), reward)
    return np.where(obj_to_target < 0.05, 10.0, reward), obj_to_target <= 0.07


def lever_pull(s: State, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerLeverPullEnvV3.compute_reward`` and its success: the hand's shoulder under the lever (x and z
    weighted four times), the lever's end lifted to the target; solved with the lever within 7.5 deg of upright."""
    gripper, lever = obs[:, :3], obs[:, 4:7]
    scale, offset = np.array([4.0, 1.0, 4.0]), np.array([0.0, 0.055, 0.07])
    lever_init = s.constants["_lever_pos_init"]
    shoulder_to_lever = (gripper + offset - lever) * scale
    shoulder_to_lever_init = (s.init_tcp + offset - lever_init) * scale
    ready_to_lift = tolerance(norm(shoulder_to_lever), 0, 0.02, norm(shoulder_to_lever_init))
    in_place = tolerance(norm(lever - s.target), 0, 0.04, norm(lever_init - s.target))
    lever_error = np.abs(-s.read("qpos", "LeverAxis") - np.pi / 2.0)
    return 10.0 * hamacher(ready_to_lift, in_place), lever_error <= np.pi / 24

