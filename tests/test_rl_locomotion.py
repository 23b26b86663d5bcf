"""MuJoCo locomotion families: the batched rollout against gymnasium's HalfCheetah-v5, rewards, bad input."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")

from fastmaml.rl.locomotion import (  # noqa: E402
    CTRL_COST,
    HalfCheetahDir,
    HalfCheetahVel,
    cheetah_model,
    model_warnings,
    torso_com,
)


def scripted(actions: np.ndarray):
    """``act`` replaying ``actions`` (T, envs, 6); the output is a dummy Gaussian."""
    t = iter(range(len(actions)))

    def act(obs):
        a = torch.as_tensor(actions[next(t)], dtype=obs.dtype).view(*obs.shape[:-1], 6)
        return a, (torch.zeros_like(a), torch.zeros_like(a))

    return act


RLLAB = {"observe_com": True, "start_noise": "normal", "velocity": "com"}  # the paper's MDP but for the physics


@pytest.mark.parametrize("family", [HalfCheetahVel(), HalfCheetahDir(), HalfCheetahVel(frame_skip=1),
                                    HalfCheetahVel(frame_skip=1, **RLLAB)],
                         ids=["vel", "dir", "vel-paper-step", "vel-rllab"])
def test_batched_rollout_is_gymnasiums_half_cheetah(family):
    """Same start state and actions: the batched rollout's observations and rewards are gymnasium's
    HalfCheetah-v5 (with the family's frame_skip) with the task's reward, bit for bit while the solver's
    warm start does not matter."""
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    steps = 8
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (steps, 2 * 3, 6))  # beyond the bounds: clipped
    episodes = family.rollout(scripted(actions), tasks, 3, steps, torch.float64, torch.Generator().manual_seed(1))
    assert episodes.observations.shape == (2, 3, steps, 20 if family.observe_com else 17)
    start = family._start(cheetah_model(), 6, torch.Generator().manual_seed(1))
    for env_index in (0, 4):
        task, trajectory = divmod(env_index, 3)
        env = family.make_env(tasks[task])
        env.reset(seed=0)
        env.unwrapped.set_state(start[env_index, 1:10], start[env_index, 10:])
        obs = env.observation()
        assert env.observation_space.shape == obs.shape
        for t in range(steps):
            np.testing.assert_allclose(episodes.observations[task, trajectory, t].numpy(), obs, rtol=0, atol=1e-12)
            obs, reward, terminated, truncated, _ = env.step(np.clip(actions[t, env_index], -1, 1))
            assert reward == pytest.approx(episodes.rewards[task, trajectory, t].item(), abs=1e-10)
            assert not terminated
    assert bool((episodes.mask == 1).all())


def test_the_torso_centre_of_mass_is_mujoco_s():
    model = cheetah_model()
    qpos = np.random.default_rng(0).normal(0, 0.5, (20, model.nq))
    data = mujoco.MjData(model)
    for env, position in enumerate(qpos):
        data.qpos[:] = position
        mujoco.mj_forward(model, data)
        np.testing.assert_allclose(torso_com(model, qpos)[env], data.subtree_com[1], rtol=0, atol=1e-12)
    qvel = np.random.default_rng(1).normal(0, 2, (20, model.nv))
    for env in range(20):
        data.qpos[:], data.qvel[:] = qpos[env], qvel[env]
        mujoco.mj_forward(model, data)
        mujoco.mj_subtreeVel(model, data)
        np.testing.assert_allclose(torso_com(model, qpos, qvel)[env], np.concatenate([data.subtree_com[1],
                                   data.subtree_linvel[1]]), rtol=0, atol=1e-12)
    moved = qpos + np.eye(model.nq)[0]  # one metre forward: the centre of mass moves with it
    np.testing.assert_allclose(torso_com(model, moved), torso_com(model, qpos) + [1, 0, 0], rtol=0, atol=1e-12)


def test_start_poses_with_rllab_s_noise():
    family = HalfCheetahVel(start_noise="normal")
    start = family._start(cheetah_model(), 4000, torch.Generator().manual_seed(0))
    qpos_noise = start[:, 1:10] - cheetah_model().qpos0
    assert np.std(qpos_noise) == pytest.approx(0.01, rel=0.05) and np.std(start[:, 10:]) == pytest.approx(0.1, rel=0.05)
    env = family.make_env(family.sample_tasks(1, torch.Generator().manual_seed(0))[0])
    positions = np.array([env.reset(seed=seed)[0][:8] for seed in range(300)])  # qpos[1:]
    assert np.std(positions - cheetah_model().qpos0[1:]) == pytest.approx(0.01, rel=0.15)


def test_rewards_are_maml_rl_s():
    velocity, actions = np.array([0.5, 1.5]), np.array([[0.1] * 6, [-1.0] * 6])
    vel = HalfCheetahVel().task_reward([{"velocity": 1.0}, {"velocity": 1.0}], velocity, actions)
    np.testing.assert_allclose(vel, [-0.5 - CTRL_COST * 0.06, -0.5 - CTRL_COST * 6])
    direction = HalfCheetahDir().task_reward([{"direction": -1}, {"direction": 1}], velocity, actions)
    np.testing.assert_allclose(direction, [-0.5 - CTRL_COST * 0.06, 1.5 - CTRL_COST * 6])


def test_tasks_are_drawn_from_the_paper_s_distributions():
    generator = torch.Generator().manual_seed(0)
    velocities = [t["velocity"] for t in HalfCheetahVel().sample_tasks(500, generator)]
    assert 0 <= min(velocities) < 0.05 and 1.95 < max(velocities) <= 2
    directions = [t["direction"] for t in HalfCheetahDir().sample_tasks(500, generator)]
    assert set(directions) == {-1, 1} and 200 < directions.count(1) < 300


def test_the_start_poses_follow_the_seed():
    family = HalfCheetahVel()
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))

    def run(seed):
        act = scripted(np.zeros((3, 4, 6)))
        return family.rollout(act, tasks, 2, 3, torch.float64, torch.Generator().manual_seed(seed)).observations

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_a_diverging_simulation_is_a_one_line_error():
    family = HalfCheetahVel()
    tasks = family.sample_tasks(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="diverged.*lower the inner or outer step size"):
        family.rollout(scripted(np.full((2, 1, 6), np.nan)), tasks, 1, 2, torch.float64)


def test_bad_family_options_and_a_missing_mujoco(monkeypatch):
    with pytest.raises(ValueError, match="low < high"):
        HalfCheetahVel(low=2, high=1)
    with pytest.raises(ValueError, match="horizon=0"):
        HalfCheetahDir(horizon=0)
    with pytest.raises(ValueError, match="frame_skip=0"):
        HalfCheetahVel(frame_skip=0)
    with pytest.raises(ValueError, match="velocity='x'; use root"):
        HalfCheetahDir(velocity="x")
    with pytest.raises(ValueError, match="start_noise='gauss'; use uniform"):
        HalfCheetahVel(start_noise="gauss")
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(ImportError, match=r"pip install 'fastmaml\[rl\]'"):
        HalfCheetahVel().rollout(scripted(np.zeros((1, 1, 6))), [{"velocity": 1.0}], 1, 1)


def test_model_compilation_is_quiet_and_forwards_other_warnings(tmp_path, monkeypatch, recwarn):
    """gymnasium's model file trips a MuJoCo deprecation that users cannot act on: no stderr line and no
    MUJOCO_LOG.TXT in the working folder; any other MuJoCo warning becomes a Python warning; the previous
    handler comes back."""
    import mujoco

    monkeypatch.chdir(tmp_path)
    before = mujoco.get_mju_user_warning()
    HalfCheetahVel().make_env({"velocity": 1.0}).close()  # compiles half_cheetah.xml through gymnasium
    assert not list(tmp_path.iterdir())
    assert not [w for w in recwarn if "MuJoCo" in str(w.message)]
    with pytest.warns(RuntimeWarning, match=r"^MuJoCo: something else$"):
        with model_warnings():
            mujoco.get_mju_user_warning()("something else")
    assert mujoco.get_mju_user_warning() is before
