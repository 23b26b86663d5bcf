"""What each batched skill reads from its simulations and shows in its observation (:class:`Skill`), and the
table of them, :data:`SKILLS`: the benchmark's ``_get_pos_objects`` and ``_get_quat_objects``, the rewards'
inputs, the attributes a reset sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastmaml.rl.sawyer import rewards as r
from fastmaml.rl.sawyer.rewards import State

Read = tuple[str, str]  # an MjData field and a name: ("xpos", "hand") is data.body("hand").xpos
_HAND: tuple[Read, ...] = (  # what every skill reads: the hand, the fingers' claws and pads, their end effectors
    ("xpos", "hand"), ("xpos", "rightclaw"), ("xpos", "leftclaw"), ("xpos", "leftpad"), ("xpos", "rightpad"),
    ("site_xpos", "rightEndEffector"), ("site_xpos", "leftEndEffector"))
CONSTANTS = ("_target_pos", "obj_init_pos", "init_tcp", "hand_init_pos")  # every skill's episode constants


@dataclass(frozen=True)
class Object:
    """An object of the observation as the skill's ``_get_pos_objects`` and ``_get_quat_objects`` give it: a
    position (``offset`` added) and an orientation, from a rotation matrix (``geom_xmat``, ``site_xmat``: scipy's
    quaternion, x y z w), MuJoCo's own quaternion (``xquat``: w x y z) or none (zeros)."""

    position: Read
    orientation: Read | None = None
    offset: tuple[float, float, float] | None = None

    def observe(self, s: State) -> np.ndarray:
        """(envs, 7): the position, then the quaternion."""
        from scipy.spatial.transform import Rotation

        position = s.read(*self.position)
        if self.offset is not None:
            position = position + np.array(self.offset)
        if self.orientation is None:
            quat = np.zeros((len(position), 4))
        elif self.orientation[0] == "xquat":
            quat = s.read(*self.orientation)
        else:
            quat = Rotation.from_matrix(s.read(*self.orientation).reshape(-1, 3, 3)).as_quat()
        return np.concatenate([position, quat], axis=1)


Reward = Callable[[State, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Skill:
    """A batched skill: its reward (``reward(state, obs, action)`` -> rewards, success), the objects its
    observation shows (at most 2), what else the reward reads after each step, and the environment's attributes
    it reads, as the episode's reset left them. ``live_target``: a site whose position is ``env._target_pos`` (a
    view of it in the benchmark's code), read after each step."""

    reward: Reward
    objects: tuple[Object, ...]
    reads: tuple[Read, ...] = ()
    constants: tuple[str, ...] = ()
    live_target: str | None = None

    def all_reads(self) -> list[Read]:
        """Every read of a step, once each: the hand's, the objects', the reward's, the live target's."""
        reads = [*_HAND]
        for obj in self.objects:
            reads += [obj.position] + ([obj.orientation] if obj.orientation else [])
        reads += [*self.reads] + ([("site_xpos", self.live_target)] if self.live_target else [])
        return list(dict.fromkeys(reads))


_OBJ = Object(("xpos", "obj"), ("geom_xmat", "objGeom"))  # get_body_com("obj"), objGeom's rotation
_HANDLE = Object(("geom_xpos", "handle"), ("geom_xmat", "handle"))  # the door's
SKILLS: dict[str, Skill] = {
    "reach-v3": Skill(r.reach, (_OBJ,)),
    "push-v3": Skill(r.push, (_OBJ,)),
    "pick-place-v3": Skill(r.pick_place, (_OBJ,)),
    "door-open-v3": Skill(r.door_open, (_HANDLE,), reads=(("qpos", "doorjoint"),)),
    "drawer-close-v3": Skill(r.drawer_close, (Object(("xpos", "drawer_link"), offset=(0.0, -0.16, 0.05)),)),
    "button-press-topdown-v3": Skill(r.button_press_topdown,
                                     (Object(("xpos", "button"), ("xquat", "button"), (0.0, 0.0, 0.193)),),
                                     constants=("_obj_to_target_init",)),
    "peg-insert-side-v3": Skill(
        r.peg_insert_side, (Object(("site_xpos", "pegGrasp"), ("site_xmat", "pegGrasp")),),
        reads=(("site_xpos", "pegHead"),
               *(("site_xpos", f"{corner}_corner_collision_box_{i}") for i in (1, 2)
                 for corner in ("bottom_right", "top_left"))),
        constants=("peg_head_pos_init",)),
    "window-open-v3": Skill(r.window_open, (Object(("site_xpos", "handleOpenStart")),),
                            constants=("window_handle_pos_init",)),
    "sweep-v3": Skill(r.sweep, (Object(("xpos", "obj"), ("xquat", "obj")),)),
    "basketball-v3": Skill(r.basketball, (Object(("xpos", "bsktball"), ("xquat", "bsktball")),), live_target="goal"),
    "drawer-open-v3": Skill(r.drawer_open, (Object(("xpos", "drawer_link"), ("xquat", "drawer_link"),
                                                  (0.0, -0.16, 0.0)),), constants=("maxDist",)),
    "door-close-v3": Skill(r.door_close, (_HANDLE,)),
    "shelf-place-v3": Skill(r.shelf_place, (_OBJ,)),
    "sweep-into-v3": Skill(r.sweep_into, (_OBJ,)),
    "lever-pull-v3": Skill(r.lever_pull, (Object(("site_xpos", "leverStart"), ("geom_xmat", "objGeom")),),
                           reads=(("qpos", "LeverAxis"),), constants=("_lever_pos_init",)),
}

