"""The Ant families: the batched rollout against gymnasium's Ant-v5, maml_rl's rewards from MuJoCo's state,
termination and its mask, bad input."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")

from fastmaml.cli import main  # noqa: E402
from fastmaml.rl import ant  # noqa: E402
from fastmaml.rl import config as rlcfg  # noqa: E402
from fastmaml.rl.ant import AntDir, AntVel, ant_model  # noqa: E402
from fastmaml.rl.baseline import with_advantages  # noqa: E402
from fastmaml.rl.locomotion import HalfCheetahDir  # noqa: E402
from fastmaml.rl.objectives import pack_target, pg_loss  # noqa: E402

RLLAB = {"frame_skip": 2, "observation": "rllab", "start_noise": "normal", "velocity": "com"}  # the recipes'
RLLAB_MODEL = {**RLLAB, "frame_skip": 1, "physics": "rllab"}  # and maml_rl's own model: one 0.02 s step, soft contacts
NQ = 15


def scripted(actions: np.ndarray):
    """``act`` replaying ``actions`` (T, envs, 8); the output is a dummy Gaussian."""
    t = iter(range(len(actions)))

    def act(obs):
        a = torch.as_tensor(actions[next(t)], dtype=obs.dtype).view(*obs.shape[:-1], 8)
        return a, (torch.zeros_like(a), torch.zeros_like(a))

    return act


@pytest.mark.parametrize("family", [AntVel(), AntDir(), AntVel(**RLLAB),
                                    AntDir(frame_skip=1, observation="rllab", velocity="root"),
                                    AntDir(**RLLAB_MODEL), AntVel(frame_skip=3, physics="rllab")],
                         ids=["vel", "dir", "vel-rllab", "dir-rllab-obs-root-velocity", "dir-rllab-model",
                              "vel-rllab-model-v5-mdp"])
def test_batched_rollout_is_gymnasiums_ant(family):
    """Same start state and actions: the batched rollout's observations, rewards and terminations are
    gymnasium's Ant-v5 (with the family's options) with the task's reward, to 1e-9 over 20 steps."""
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    steps, envs = 20, 6
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (steps, envs, 8))  # beyond the bounds: clipped
    episodes = family.rollout(scripted(actions), tasks, 3, steps, torch.float64, torch.Generator().manual_seed(1))
    assert episodes.observations.shape == (2, 3, steps, 125 if family.observation == "rllab" else 105)
    start = family._start(family.model, envs, torch.Generator().manual_seed(1))
    ended = 0
    for env_index in range(envs):
        task, trajectory = divmod(env_index, 3)
        env = family.make_env(tasks[task])
        env.reset(seed=0)
        env.unwrapped.set_state(start[env_index, 1:1 + NQ], start[env_index, 1 + NQ:])
        obs = env.observation()
        assert env.observation_space.shape == obs.shape
        mask = episodes.mask[task, trajectory]
        for t in range(steps):
            assert mask[t] == 1
            np.testing.assert_allclose(episodes.observations[task, trajectory, t].numpy(), obs, rtol=0, atol=1e-9)
            obs, reward, terminated, truncated, _ = env.step(np.clip(actions[t, env_index], -1, 1))
            assert reward == pytest.approx(episodes.rewards[task, trajectory, t].item(), abs=1e-9)
            if terminated:  # the batched episode ends at the same step: no reward, no mask after it
                assert not mask[t + 1:].any() and not episodes.rewards[task, trajectory, t + 1:].any()
                ended += 1
                break
    if family.observation == "v5":
        assert ended >= 1  # Ant-v5's ant jumps out of [0.2, 1.0] under these actions: termination was compared


def reference(family, task: dict, start: np.ndarray, actions: np.ndarray) -> tuple[list[float], list[bool]]:
    """maml_rl's reward and ``done`` written out on one MjData: ``frame_skip`` physics steps, then Ant-v5's
    reading of the last one (``mj_rnePostConstraint``, the torso's xpos) or rllab's ``forward()``."""
    model = family.model
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = start[1:1 + NQ], start[1 + NQ:]
    mujoco.mj_forward(model, data)
    dt = model.opt.timestep * family.frame_skip
    rewards, done = [], []
    for action in np.clip(actions, -1, 1):
        x_before = data.xpos[1, 0]
        data.ctrl[:] = action
        mujoco.mj_step(model, data, nstep=family.frame_skip)
        if family.observation == "v5":
            mujoco.mj_rnePostConstraint(model, data)
            velocity, force = (data.xpos[1, 0] - x_before) / dt, data.cfrc_ext.copy()
        else:
            mujoco.mj_forward(model, data)
            mujoco.mj_rnePostConstraint(model, data)
            mujoco.mj_subtreeVel(model, data)
            velocity, force = data.subtree_linvel[1, 0], data.cfrc_ext.copy()
        costs = 0.005 * np.sum(action**2) + 0.0005 * np.sum(np.clip(force, -1, 1) ** 2)
        if "velocity" in task:
            rewards.append(-abs(velocity - task["velocity"]) + 1.0 - costs + 0.05)
        else:
            rewards.append(task["direction"] * velocity - costs + 0.05)
        done.append(not (np.isfinite(data.qpos).all() and np.isfinite(data.qvel).all() and 0.2 <= data.qpos[2] <= 1.0))
        if done[-1]:
            break
    return rewards, done


@pytest.mark.parametrize("family", [AntVel(**RLLAB), AntDir(**RLLAB), AntDir(), AntDir(**RLLAB_MODEL)],
                         ids=["vel", "dir", "dir-v5", "dir-rllab-model"])
def test_rewards_are_maml_rl_s_from_mujoco_s_state(family):
    tasks = [{"velocity": 0.7}, {"velocity": 2.5}] if isinstance(family, AntVel) else [{"direction": 1},
                                                                                       {"direction": -1}]
    steps = 12
    actions = np.random.default_rng(2).uniform(-1.2, 1.2, (steps, 4, 8))
    episodes = family.rollout(scripted(actions), tasks, 2, steps, torch.float64, torch.Generator().manual_seed(3))
    start = family._start(family.model, 4, torch.Generator().manual_seed(3))
    for env_index in range(4):
        task, trajectory = divmod(env_index, 2)
        rewards, done = reference(family, tasks[task], start[env_index], actions[:, env_index])
        np.testing.assert_allclose(episodes.rewards[task, trajectory, :len(rewards)].numpy(), rewards, rtol=0,
                                   atol=1e-8)
        assert episodes.mask[task, trajectory].sum() == len(rewards)  # alive through the step that ends it


def test_the_reward_formulas():
    velocity, actions = np.array([0.5, 2.0]), np.array([[0.1] * 8, [-1.0] * 8])
    force = np.zeros((2, 14, 6))
    force[1, 1, :3] = [3.0, -0.5, 0.2]  # clipped to 1 before squaring
    contact = 0.0005 * np.array([0.0, 1 + 0.25 + 0.04])
    vel = AntVel().task_reward([{"velocity": 1.5}] * 2, velocity, actions, force)
    np.testing.assert_allclose(vel, [-1.0 + 1 - 0.005 * 0.08 - contact[0] + 0.05, -0.5 + 1 - 0.04 - contact[1] + 0.05])
    direction = AntDir().task_reward([{"direction": -1}, {"direction": 1}], velocity, actions, force)
    np.testing.assert_allclose(direction, [-0.5 - 0.005 * 0.08 + 0.05, 2.0 - 0.04 - contact[1] + 0.05])


def test_a_terminated_episode_is_masked_out_of_the_baseline_and_the_policy_gradient(monkeypatch):
    """Ants thrown upward leave [0.2, 1.0]: their episode ends; the later steps carry no reward, no
    advantage, and nothing in them moves the policy-gradient loss."""
    family = AntDir(**RLLAB)
    start = family._start

    def thrown(model, envs, generator):
        state = start(model, envs, generator)
        state[::2, 1 + NQ + 2] = 6.0  # every other ant leaves the ground at 6 m/s
        return state

    monkeypatch.setattr(family, "_start", thrown)
    steps = 15
    actions = np.random.default_rng(4).uniform(-0.5, 0.5, (steps, 4, 8))
    tasks = [{"direction": 1}, {"direction": -1}]
    episodes = family.rollout(scripted(actions), tasks, 2, steps, torch.float64, torch.Generator().manual_seed(5))
    lengths = episodes.mask.sum(-1)
    assert (lengths[:, 0] < steps).all() and (lengths[:, 1] == steps).all()  # the thrown ones ended early
    assert ((episodes.mask[..., 1:] <= episodes.mask[..., :-1]).all())  # once ended, ended for good
    assert not episodes.rewards[episodes.mask == 0].any()
    assert torch.equal(episodes.returns(), (episodes.rewards * episodes.mask).sum(-1))
    episodes = with_advantages(episodes, gamma=0.99)
    assert not episodes.advantages[episodes.mask == 0].any()
    # the masked steps' observations and actions do not enter the loss
    ended = episodes.mask == 0
    noisy = episodes.observations.clone()
    noisy[ended] = 100.0
    target = pack_target(episodes)
    policy = torch.nn.Linear(125, 8, dtype=torch.float64)
    log_std = torch.zeros(8, dtype=torch.float64)
    for i in range(2):
        losses = [pg_loss((policy(obs[i]), log_std.expand(*obs[i].shape[:-1], 8)), target[i])
                  for obs in (episodes.observations, noisy)]
        assert losses[0].item() == pytest.approx(losses[1].item(), abs=1e-12)


def test_rllab_physics_is_maml_rl_s_ant_xml():
    """``physics="rllab"`` on Ant-v5's compiled model against a model compiled from Ant-v5's ``ant.xml``
    edited as maml_rl's ``vendor/mujoco_models/ant.xml`` differs from it (its time step, its default geom's
    solref and solimp): the same parameters, and the same states over 50 steps of a random controller."""
    path = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "ant.xml"
    xml = path.read_text()
    edits = [('<option integrator="RK4" timestep="0.01"/>', '<option integrator="RK4" timestep="0.02"/>'),
             ('<geom conaffinity="0" condim="3"', '<geom solref=".02 1" solimp=".8 .8 .01" conaffinity="0" condim="3"')]
    for before, after in edits:
        assert xml.count(before) == 1
        xml = xml.replace(before, after)
    models = [mujoco.MjModel.from_xml_string(xml, {}), ant_model("rllab")]
    assert models[1].opt.timestep == 0.02 and ant_model("v5").opt.timestep == 0.01
    for field in ("geom_solimp", "geom_solref", "geom_margin", "body_mass", "actuator_gear", "dof_damping"):
        np.testing.assert_array_equal(getattr(models[0], field), getattr(models[1], field), err_msg=field)
    assert not np.array_equal(ant_model("v5").geom_solimp, models[1].geom_solimp)
    controls = np.random.default_rng(0).uniform(-1, 1, (50, 8))
    trajectories = []
    for model in models:
        data = mujoco.MjData(model)
        data.qpos[:] = model.numeric("init_qpos").data
        states = []
        for control in controls:
            data.ctrl[:] = control
            mujoco.mj_step(model, data)
            states.append(np.concatenate([data.qpos, data.qvel]))
        trajectories.append(np.array(states))
    np.testing.assert_array_equal(*trajectories)


def test_tasks_are_drawn_from_maml_rl_s_distributions():
    generator = torch.Generator().manual_seed(0)
    velocities = [t["velocity"] for t in AntVel().sample_tasks(500, generator)]
    assert 0 <= min(velocities) < 0.05 and 2.95 < max(velocities) <= 3
    directions = [t["direction"] for t in AntDir().sample_tasks(500, generator)]
    assert set(directions) == {-1, 1} and 200 < directions.count(1) < 300


@pytest.mark.parametrize("family", [AntDir, HalfCheetahDir])
def test_direction_families_run_backward_with_the_probability_asked(family):
    """``env_options.backward``: 1/2 draws exactly what a run drew before the option; 3/7 (maml_rl's environments
    when the paper's runs trained) and 0 and 1 draw that share of backward tasks."""
    def directions(backward=None, n=7000):
        options = {} if backward is None else {"backward": backward}
        return np.array([t["direction"] for t in family(**options).sample_tasks(n, torch.Generator().manual_seed(3))])

    np.testing.assert_array_equal(directions(0.5), directions())
    np.testing.assert_array_equal(directions(), torch.randint(0, 2, (7000,), generator=torch.Generator()
                                                                  .manual_seed(3)).numpy() * 2 - 1)
    assert abs((directions(3 / 7) == -1).mean() - 3 / 7) < 0.02
    assert (directions(0.0) == 1).all() and (directions(1.0) == -1).all()
    with pytest.raises(ValueError, match=r"backward=1.5; use a probability in \[0, 1\]"):
        family(backward=1.5)


def test_rllab_s_start_pose_is_the_crouched_init_qpos():
    model = ant_model()
    start = AntVel(start_noise="normal")._start(model, 2000, torch.Generator().manual_seed(0))
    crouched = model.numeric("init_qpos").data
    assert crouched[2] == 0.55
    assert np.std(start[:, 1:1 + NQ] - crouched) == pytest.approx(0.01, rel=0.05)
    assert np.std(start[:, 1 + NQ:]) == pytest.approx(0.1, rel=0.05)
    env = AntVel(start_noise="normal", observation="rllab").make_env({"velocity": 1.0})
    heights = np.array([env.reset(seed=seed)[0][2] for seed in range(50)])  # rllab observes qpos in full
    assert abs(heights.mean() - 0.55) < 0.01


def test_a_diverging_simulation_is_a_one_line_error():
    family = AntVel(**RLLAB)
    tasks = family.sample_tasks(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="diverged.*lower the inner or outer step size"):
        family.rollout(scripted(np.full((2, 1, 8), np.nan)), tasks, 1, 2, torch.float64)


def test_a_diverging_run_keeps_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The policy's actions turn non-finite at the third meta-iteration: one line, exit 2, and the
    checkpoint of iteration 2 left as it was."""
    run = tmp_path / "run"
    original, calls = ant._AntTasks.rollout, {"n": 0}

    def rollout(self, act, *args, **kwargs):
        calls["n"] += 1  # two rollouts per meta-iteration: before and after adaptation
        if calls["n"] > 4:
            def act(obs, act=act):
                actions, output = act(obs)
                return actions * float("nan"), output
        return original(self, act, *args, **kwargs)

    monkeypatch.setattr(ant._AntTasks, "rollout", rollout)
    argv = ["train", "ant-vel", "iterations=5", "meta_batch_size=2", "trajectories=2", "horizon=4",
            "policy.hidden=[4]", "baseline_iterations=0", "checkpoint_every=1", "--out", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "diverged" in err and "Traceback" not in err
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2


def test_bad_family_options_are_one_line_errors_naming_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="observation='gym'; use v5 .* or rllab"):
        AntVel(observation="gym")
    with pytest.raises(ValueError, match="velocity='x'; use root .* or com"):
        AntDir(velocity="x")
    with pytest.raises(ValueError, match="start_noise='gauss'; use uniform .* or normal"):
        AntVel(start_noise="gauss")
    with pytest.raises(ValueError, match="low < high"):
        AntVel(low=3, high=0)
    with pytest.raises(ValueError, match="physics='mujoco'; use v5 .* or rllab"):
        AntDir(physics="mujoco")
    with pytest.raises(ValueError, match="frame_skip=0"):
        AntDir(frame_skip=0)
    with pytest.raises(ValueError, match="horizon=0"):
        AntDir(horizon=0)
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(ImportError, match=r"pip install 'fastmaml\[rl\]'"):
        AntVel().rollout(scripted(np.zeros((1, 1, 8))), [{"velocity": 1.0}], 1, 1)


def test_the_direction_recipe_is_its_best_measured_run():
    """``ant-dir`` resolves to the settings of ``benchmarks/partial-runs/ant-dir-rllab-steps/`` (maml_rl's physics
    and batch: 446.3 on the paper's goals in RESULTS.md), all but the run's own seed and thread count and the
    checkpoints it kept (which do not change training), so the recipe's name in RESULTS.md and README.md
    stands for that run."""
    root = Path(__file__).resolve().parents[1]
    run = rlcfg.load(root / "benchmarks/partial-runs/ant-dir-rllab-steps/config.yaml")
    recipe = rlcfg.resolve("ant-dir", [f"seed={run.seed}", f"threads={run.threads}", f"keep_every={run.keep_every}"])
    assert dataclasses.asdict(recipe) == dataclasses.asdict(run)
    assert (recipe.env_options["physics"], recipe.env_options["frame_skip"], recipe.budget) == ("rllab", 1, "steps")


SHORT = ["iterations=2", "meta_batch_size=2", "trajectories=2", "horizon=4", "policy.hidden=[4]",  # a run's size
         "baseline_iterations=0", "eval_tasks=2", "eval_inner_steps=1", "eval_trajectories=2", "--no-progress"]


def train(argv: list[str]) -> None:
    """``fastmaml ARGV`` in this process, which must succeed (conftest restores the thread count it sets)."""
    assert main(argv) == 0


@pytest.mark.parametrize("extra", [[], ["threads=2", "policy.init=glorot"], ["threads=2", "budget=steps"]])
def test_the_documented_physics_override_trains_and_evaluates(tmp_path, extra):
    """``fastmaml train ant-dir env_options.physics=rllab env_options.frame_skip=1`` (docs/tutorials/locomotion.md,
    benchmarks/RESULTS.md), and with ``threads=2 policy.init=glorot`` or ``threads=2 budget=steps`` (RESULTS.md's
    Glorot and step-budget runs), as written, with short iteration overrides: it runs and records the options."""
    run = tmp_path / "run"
    argv = ["train", "ant-dir", "threads=1", "seed=0", "env_options.physics=rllab", "env_options.frame_skip=1",
            *extra, *SHORT, "--out", str(run)]
    train(argv)
    options = (run / "config.yaml").read_text()
    assert "physics: rllab" in options and "frame_skip: 1" in options
    assert all(f"{key.split('.')[-1]}: {value}" in options for key, value in (o.split("=") for o in extra))
    assert (run / "eval.json").is_file()


def test_the_kept_checkpoint_commands_run_as_written(tmp_path, monkeypatch):
    """``fastmaml train ant-dir threads=2 iterations=800``, ``fastmaml eval runs/ant-dir --iteration 575`` and
    ``fastmaml eval runs/ant-dir`` (docs/tutorials/locomotion.md; docs/how-to/resume.md's ``--iteration 300``), as
    written with a short run: 25 iterations, so that the recipe's ``keep_every: 25`` keeps one to score."""
    monkeypatch.chdir(tmp_path)
    short = [o for o in SHORT if not o.startswith("iterations=")]
    train(["train", "ant-dir", "threads=2", "iterations=25", *short])
    run = tmp_path / "runs" / "ant-dir"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["checkpoint-25.pt"]
    train(["eval", "runs/ant-dir", "--iteration", "25"])
    train(["eval", "runs/ant-dir"])
    assert {p.name for p in run.glob("eval*.json")} == {"eval.json", "eval-iteration25-2tasks-1steps.json",
                                                        "eval-2tasks-1steps.json"}


def test_the_former_direction_defaults_train_by_override(tmp_path):
    """``fastmaml train ant-dir threads=2 env_options.physics=v5 env_options.frame_skip=2 budget=trajectories``
    (docs/tutorials/locomotion.md, CHANGELOG.md, RESULTS.md's Ant-v5 run), as written, with short overrides."""
    run = tmp_path / "run"
    train(["train", "ant-dir", "threads=2", "env_options.physics=v5", "env_options.frame_skip=2", "budget=trajectories",
           *SHORT, "--out", str(run)])
    config = rlcfg.load(run / "config.yaml")
    assert (config.env_options["physics"], config.env_options["frame_skip"], config.budget) == ("v5", 2, "trajectories")
    assert (run / "eval.json").is_file()


def test_paper_goals_split_the_direction_goals_as_the_pickles_environments_did():
    """The direction pickles were written with U[0.1, 0.8] draws, backward below 0.4 (benchmarks/paper_goals.py):
    Ant direction's seed-2 goals split 20 and 20, where the later scripts' U[0, 3] below 1.5 gives 25 backward;
    HalfCheetah direction's seed-1 goals split 22 backward either way. Velocity goals stay U[0, high]."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("paper_goals", root / "benchmarks" / "paper_goals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for env, seed, high, backward, later in [("ant-dir", 2, 3.0, 20, 25), ("half-cheetah-dir", 1, 2.0, 22, 22)]:
        directions = np.array([task["direction"] for task in module.paper_goals(env)])
        np.random.seed(seed)
        draws = np.random.uniform(0.0, high, 40)
        assert (directions == -1).sum() == backward and (draws < high / 2).sum() == later
        # the same draws: a goal is backward exactly below 3/7 of the range
        np.testing.assert_array_equal(directions == -1, draws < high * 0.3 / 0.7)
    velocities = [task["velocity"] for task in module.paper_goals("ant-vel")]
    np.random.seed(1)
    assert velocities == list(np.random.uniform(0.0, 3.0, 40))


def test_paper_goals_scores_a_run_on_the_papers_goals_with_either_budget(tmp_path):
    """``benchmarks/paper_goals.py RUN ICML --steps 1 --budget steps`` (benchmarks/RESULTS.md) on a short
    ``ant-dir`` run: the paper's 40 goals, the step budget named, the paper's rows read from its pickles (written
    here in maml_rl's format: ``task_avg_returns``, one list of 40 goals per inner step)."""
    import pickle

    run, icml = tmp_path / "run", tmp_path / "icml"
    train(["train", "ant-dir", "threads=1", "seed=0", "iterations=1", "meta_batch_size=2", "trajectories=2",
           "horizon=4", "policy.hidden=[4]", "baseline_iterations=0", "eval_tasks=2", "eval_inner_steps=1",
           "eval_trajectories=2", "--out", str(run), "--no-progress"])
    icml.mkdir()
    with open(icml / "icml_antdirec_results_maml.pkl", "wb") as f:
        pickle.dump({"task_avg_returns": [[1.0] * 40, [3.0] * 40]}, f)
    root = Path(__file__).resolve().parents[1]
    command = ["benchmarks/paper_goals.py", "RUN", "/path/to/maml_rl/icml", "--steps", "1"]
    assert " ".join(command) in (root / "benchmarks/RESULTS.md").read_text()
    assert " ".join([*command, "--budget", "steps"]) in (root / "benchmarks/RESULTS.md").read_text()
    outputs = {}
    for budget in ["trajectories", "steps"]:
        out = subprocess.run([sys.executable, command[0], str(run), str(icml), "--steps", "1", "--budget", budget],
                             cwd=root, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(root / "src")})
        assert out.returncode == 0, out.stderr[-2000:]
        outputs[budget] = out.stdout
    assert "the paper's 40 goals, 2 trajectories of 4 steps" in outputs["trajectories"]
    assert "the paper's 40 goals, 8 environment steps in episodes of up to 4" in outputs["steps"]
    for out in outputs.values():
        rows = {line.split("  ")[0]: line for line in out.splitlines()}
        assert "maml" in rows and "paper maml" in rows and "1.0 ±   0.0" in rows["paper maml"]
