"""Meta-World's Sawyer skills stepped together: many environments per call, their observations and rewards
computed as arrays over the environments instead of one Python step each.

A Meta-World step (``SawyerXYZEnv.step``) is about 10-20 % MuJoCo and the rest the benchmark's own Python: the
observation's quaternion through scipy, a scan of the contact list for the ``grasp_success`` entry of ``info``,
and reward functions of a few hundred scalar numpy operations. :class:`Lockstep` runs the same physics calls on
each environment's own ``MjData`` (the mocap move and gripper control of ``set_xyz_action``, ``frame_skip``
``mj_step``, the forward pass that refreshes positions), reads what the skill's observation and reward need
(:class:`Skill`: bodies, geoms, sites, joint angles) and computes the observation (frame-stacked, clipped to the
observation space) and the v2 reward and success once for all environments of a skill. The batched skills
(:data:`SKILLS`) are ML10's: its ten training skills ``reach``, ``push``, ``pick-place``, ``door-open``,
``drawer-close``, ``button-press-topdown``, ``peg-insert-side``, ``window-open``, ``sweep``, ``basketball``
and its five test skills ``drawer-open``, ``door-close``, ``shelf-place``, ``sweep-into``, ``lever-pull`` (all
``-v3``). It skips what the sampler never reads (the other ``info`` entries, the contact scan behind them). A
task's first reset is Meta-World's own ``env.reset()``; its later ones restore the MuJoCo state that one left,
since a reset is deterministic per task and costs a fifth of an episode's physics.

The result is Meta-World's step to rounding: ``tests/test_rl_metaworld.py`` steps each skill both ways from the
same state with the same actions (the benchmark's scripted policy plus noise), over two episodes, and compares
observations, rewards and success (1e-12); ``benchmarks/metaworld_sampler.py`` measures the speed beside
gymnasium's ``SyncVectorEnv``. Other skills, or an environment built with another ``reward_function_version``,
step through Meta-World's own ``env.step``, in the same call.

The formulas are the benchmark's (``metaworld/envs/sawyer_<skill>_v3.py``'s ``compute_reward``,
``evaluate_state``, ``_get_pos_objects``, ``_get_quat_objects``; ``SawyerXYZEnv._gripper_caging_reward``;
``utils/reward_utils.py``) written over a leading environment axis. Its quirks are kept: pick-place's, sweep's and
sweep-into's caging margins use ``init_left_pad``/``init_right_pad``, views of the live body positions in the
benchmark's code, so the pads' current positions; basketball's ``_target_pos`` is a view of its goal site's
position, read after each step; the observation's hand is clipped to the hand space before door-open,
drawer-open and lever-pull read it back for their rewards.
"""

from fastmaml.rl.sawyer.lockstep import Lockstep, batched
from fastmaml.rl.sawyer.rewards import State
from fastmaml.rl.sawyer.shaping import hamacher, tolerance
from fastmaml.rl.sawyer.skills import SKILLS, Object, Skill

__all__ = ["SKILLS", "Lockstep", "Object", "Skill", "State", "batched", "hamacher", "tolerance"]
