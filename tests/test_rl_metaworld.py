"""Meta-World's task families (fastmaml.rl.metaworld): the benchmark's own task sets, the lockstep sampler against
gymnasium-stepped environments, success read from ``info["success"]``, bad input, a two-iteration ml1-reach run
whose evaluation reports success beside return. Skipped where the metaworld extra is not installed, except what
needs no Meta-World (its missing-package error, the evaluation's generic success rows)."""

import json
import pickle
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from fastmaml.cli import main  # noqa: E402
from fastmaml.rl import metaworld as mw  # noqa: E402
from fastmaml.rl.evaluate import evaluate, format_table  # noqa: E402


@pytest.fixture(scope="module")
def metaworld():
    return pytest.importorskip("metaworld")


@pytest.fixture(scope="module")
def reach(metaworld):
    return mw.ML1("reach", horizon=15)


def scripted(actions: np.ndarray):
    """``act`` replaying ``actions`` (T, tasks, 4) or (T, tasks, N, 4); the output is a dummy Gaussian."""
    t = iter(range(len(actions)))

    def act(obs):
        a = torch.as_tensor(actions[next(t)], dtype=obs.dtype).reshape(*obs.shape[:2], 4)
        return a, (torch.zeros_like(a), torch.zeros_like(a))

    return act


def rand_vecs(tasks) -> list[bytes]:
    """What makes a Meta-World task: the goal and object positions (``rand_vec``) it was drawn with."""
    return [pickle.loads(task.data)["rand_vec"].tobytes() for task in tasks]


def test_ml1_task_sets_are_the_benchmark_s_and_disjoint(metaworld, reach):
    """50 training and 50 test goals, exactly ``metaworld.ML1("reach-v3", seed=0)``'s, none shared; the training
    draw takes only training tasks (distinct ones), the meta-test draw only test tasks."""
    own = metaworld.ML1("reach-v3", seed=0)
    train, test = reach.tasks("train"), reach.tasks("test")
    assert len(train) == len(test) == 50
    assert rand_vecs(reach._task(t) for t in train) == rand_vecs(own.train_tasks)
    assert rand_vecs(reach._task(t) for t in test) == rand_vecs(own.test_tasks)
    assert not set(rand_vecs(own.train_tasks)) & set(rand_vecs(own.test_tasks))
    drawn = reach.sample_tasks(20, torch.Generator().manual_seed(0))
    assert {t["split"] for t in drawn} == {"train"} and len({t["index"] for t in drawn}) == 20
    assert {t["split"] for t in reach.sample_test_tasks(50, torch.Generator().manual_seed(0))} == {"test"}
    assert drawn == reach.sample_tasks(20, torch.Generator().manual_seed(0))  # the seed decides


def test_ml10_meta_tests_on_five_new_skills(metaworld):
    family = mw.ML10(horizon=5)
    train = {t["skill"] for t in family.tasks("train")}
    test = {t["skill"] for t in family.tasks("test")}
    assert train == set(metaworld.env_dict.ML10_V3["train"]) and len(train) == 10
    assert test == {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}
    assert not train & test
    from collections import Counter

    drawn = family.sample_tasks(20, torch.Generator().manual_seed(0))  # even over the skills, as garage draws
    assert Counter(t["skill"] for t in drawn) == {skill: 2 for skill in train}
    assert {t["split"] for t in drawn} == {"train"}
    assert Counter(t["skill"] for t in family.sample_test_tasks(50, torch.Generator())) == {s: 10 for s in test}
    tasks = family.sample_test_tasks(2, torch.Generator().manual_seed(0))
    episodes = family.rollout(scripted(np.zeros((5, 2, 4))), tasks, 1, 5, torch.float64)
    assert episodes.observations.shape == (2, 1, 5, 39) and episodes.success.shape == (2, 1)


@pytest.mark.parametrize("side_by_side", [True, False])
def test_the_lockstep_sampler_is_gymnasium_s_meta_world(metaworld, reach, side_by_side):
    """Same tasks and actions (beyond the bounds: clipped): the sampler's observations, rewards and success are
    those of ``make_env(task)`` stepped through gymnasium, bit for bit, with a task's trajectories side by side
    on copies of its simulation (ML1 reach) or one after another (ML1 assembly, a skill Meta-World steps)."""
    family = reach if side_by_side else mw.ML1("assembly", horizon=15)
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(1))
    steps, trajectories = 15, 2
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (trajectories * steps, 2, 4))
    # side by side, step t of trajectory j is act's call t, entry [i, j]; one after another, call j * steps + t
    replay = actions.reshape(steps, 2, trajectories, 4) if side_by_side else actions
    episodes = family.rollout(scripted(replay), tasks, trajectories, steps, torch.float64)
    assert episodes.observations.shape == (2, trajectories, steps, 39)
    assert bool((episodes.mask == 1).all())
    for i, task in enumerate(tasks):
        env = family.make_env(task)
        for j in range(trajectories):
            obs, _ = env.reset(seed=0)
            solved = False
            for t in range(steps):
                assert np.array_equal(episodes.observations[i, j, t].numpy(), obs), (i, j, t)
                action = replay[t, i, j] if side_by_side else actions[j * steps + t, i]
                obs, reward, terminated, truncated, info = env.step(np.clip(action, -1, 1))
                assert reward == episodes.rewards[i, j, t].item() and not terminated
                solved |= bool(info["success"])
            assert truncated  # the episode ends at the family's horizon
            assert episodes.success[i, j].item() == float(solved)


# ML10's skills (its training ones, then its test ones), each with the benchmark's scripted policy (metaworld.policies)
SCRIPTS = {
    "reach": "SawyerReachV3Policy", "push": "SawyerPushV3Policy", "pick-place": "SawyerPickPlaceV3Policy",
    "door-open": "SawyerDoorOpenV3Policy", "drawer-close": "SawyerDrawerCloseV3Policy",
    "button-press-topdown": "SawyerButtonPressTopdownV3Policy", "peg-insert-side": "SawyerPegInsertionSideV3Policy",
    "window-open": "SawyerWindowOpenV3Policy", "sweep": "SawyerSweepV3Policy",
    "basketball": "SawyerBasketballV3Policy", "drawer-open": "SawyerDrawerOpenV3Policy",
    "door-close": "SawyerDoorCloseV3Policy", "shelf-place": "SawyerShelfPlaceV3Policy",
    "sweep-into": "SawyerSweepIntoV3Policy", "lever-pull": "SawyerLeverPullV3Policy"}


@pytest.mark.filterwarnings("ignore:Constant")  # the scripted policies say their gains saturate the actions
@pytest.mark.parametrize("skill", list(SCRIPTS))
def test_the_batched_step_is_meta_world_s_step(metaworld, skill):
    """fastmaml.rl.sawyer's batched observation, reward and success against Meta-World's own ``env.step``, from the
    same reset with the same actions: the benchmark's scripted policy for the skill plus noise, so the episodes
    reach, grasp, lift and succeed and every branch of the reward is taken."""
    from metaworld import policies

    from fastmaml.rl.sawyer import Lockstep

    scripted_policy = getattr(policies, SCRIPTS[skill])()
    family = mw.ML1(skill)
    tasks = family.sample_tasks(6, torch.Generator().manual_seed(1))
    own = [family.make_env(t).unwrapped for t in tasks]
    # the physics over 4 threads (the result cannot depend on them: every simulation is its own)
    lockstep = Lockstep([family.make_env(t).unwrapped for t in tasks], [t["skill"] for t in tasks], threads=4)
    assert list(lockstep.groups) == [f"{skill}-v3"] and not lockstep.others
    obs = np.stack([env.reset()[0] for env in own])
    assert np.array_equal(lockstep.reset(), obs)
    goals = np.stack([env._target_pos for env in own])  # hidden from the observation (ML1), given to the script
    noise, solved = np.random.default_rng(0), np.zeros(len(tasks))
    for length in (150, 20):  # a second episode: the batched reset restores the first one's start
        for _ in range(length):
            seen = np.concatenate([obs[:, :-3], goals], axis=1)
            actions = np.stack([scripted_policy.get_action(o) for o in seen]) + noise.normal(0, 0.3, (len(tasks), 4))
            actions = np.clip(actions, -1, 1)
            steps = [env.step(a) for env, a in zip(own, actions)]
            obs = np.stack([s[0] for s in steps])
            batched_obs, rewards, success = lockstep.step(actions)
            np.testing.assert_allclose(batched_obs, obs, rtol=0, atol=1e-12)
            np.testing.assert_allclose(rewards, [s[1] for s in steps], rtol=0, atol=1e-12)
            assert success.tolist() == [bool(s[4]["success"]) for s in steps]
            solved += success
        obs = np.stack([env.reset()[0] for env in own])
        assert np.array_equal(lockstep.reset(), obs)
    assert (solved > 0).sum() >= 3  # the noisy script solves most goals within 150 steps


def test_episodes_side_by_side_on_push_across_rollouts(metaworld):
    """ML1 push, a task's episodes on copies of its simulation, reused by later rollouts with other tasks and
    other numbers of episodes (2 physics threads): each trajectory is gymnasium's, step for step."""
    family = mw.ML1("push", horizon=25, threads=2)
    for seed, trajectories in ((0, 3), (1, 2), (2, 4)):
        tasks = family.sample_tasks(2, torch.Generator().manual_seed(seed))
        replay = np.random.default_rng(seed).uniform(-1.5, 1.5, (25, 2, trajectories, 4))
        episodes = family.rollout(scripted(replay), tasks, trajectories, 25, torch.float64)
        for i, task in enumerate(tasks):
            env = family.make_env(task)
            for j in range(trajectories):
                obs, _ = env.reset()
                for t in range(25):
                    assert np.array_equal(episodes.observations[i, j, t].numpy(), obs), (seed, i, j, t)
                    obs, reward, *_ = env.step(np.clip(replay[t, i, j], -1, 1))
                    assert reward == episodes.rewards[i, j, t].item()


def test_the_batched_step_clips_the_move_as_meta_world_does(metaworld):
    """Actions beyond [-1, 1] given straight to Lockstep: the hand's move is clipped, the gripper's action is
    used raw (in the control and the reward), as ``SawyerXYZEnv.step`` does; an environment given twice is an
    error."""
    from fastmaml.rl.sawyer import Lockstep

    family = mw.ML1("pick-place")
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    own = [family.make_env(t).unwrapped for t in tasks]
    lockstep = Lockstep([family.make_env(t).unwrapped for t in tasks], [t["skill"] for t in tasks])
    assert np.array_equal(lockstep.reset(), np.stack([env.reset()[0] for env in own]))
    for actions in np.random.default_rng(0).uniform(-3, 3, (10, 2, 4)):
        steps = [env.step(a) for env, a in zip(own, actions)]
        obs, rewards, _ = lockstep.step(actions)
        np.testing.assert_allclose(obs, np.stack([s[0] for s in steps]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rewards, [s[1] for s in steps], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="appears twice; give each entry its own simulation"):
        Lockstep([own[0], own[0]], ["pick-place-v3"] * 2)


def test_success_is_reached_at_any_step(metaworld, reach):
    """A hand driven at the goal solves reach; random actions do not: the episode's success is whether
    ``info["success"]`` was true at some step, as gymnasium stepping reads it."""
    family = mw.ML1("reach", horizon=60)
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(2))
    envs = [family.make_env(t) for t in tasks]
    goals = torch.tensor(np.stack([env.reset()[0] is not None and env.unwrapped._target_pos for env in envs]))

    def to_goal(obs):  # the scripted reach policy's move, toward the goal the observation hides
        delta = (5 * (goals.view(2, 1, 3) - obs[..., :3])).clamp(-1, 1)
        a = torch.cat([delta, torch.zeros(2, 1, 1, dtype=obs.dtype)], -1)
        return a, (torch.zeros_like(a), torch.zeros_like(a))

    assert family.rollout(to_goal, tasks, 1, 60, torch.float64).success.flatten().tolist() == [1.0, 1.0]
    still = family.rollout(scripted(np.zeros((15, 2, 4))), tasks, 1, 15, torch.float64)
    assert still.success.flatten().tolist() == [0.0, 0.0]


def test_the_batched_norm_is_numpy_s_linalg_norm_bit_for_bit():
    """Meta-World measures distances with ``np.linalg.norm`` (a BLAS dot, fused multiply-adds on some builds):
    the batched step's ``norm`` rounds as it does, row for row, where ``sqrt((x * x).sum(-1))`` differs in the last
    bit for about a tenth of rows on such a build. Rows of 2 and 3 entries, strided slices among them."""
    from fastmaml.rl.sawyer.shaping import norm

    x = np.random.default_rng(0).normal(size=(4000, 6))
    for rows in (x[:, :3], x[:, 3:5], x[:, ::2], x[:7, :3] * np.array([1.0, 0.0, 1.0])):
        assert np.array_equal(norm(rows), np.array([np.linalg.norm(row) for row in rows]))


def test_evaluation_reports_success_only_where_the_family_does():
    """A family whose episodes carry ``success``: a success rate per inner step beside the return, and rows
    in the table; a family without (2D navigation): the table and results as before."""
    from fastmaml.rl import GaussianPolicy, MetaRL
    from fastmaml.rl.envs import Navigation2DTasks

    class Solved(Navigation2DTasks):  # success: the episode ends within 0.2 of its goal
        def rollout(self, act, tasks, trajectories, horizon, dtype=torch.float32, generator=None):
            episodes = super().rollout(act, tasks, trajectories, horizon, dtype, generator)
            near = (-episodes.rewards[..., -1] < 0.2).to(dtype)
            return mw.SuccessEpisodes(*(getattr(episodes, f) for f in ("observations", "actions", "rewards",
                                                                         "mask", "outputs")), success=near)

    torch.manual_seed(0)
    learner = MetaRL(GaussianPolicy(2, 2, (8,)), trajectories=2, horizon=5)
    results = evaluate({"maml": learner}, Solved(horizon=5), 3, 1, seed=0)
    assert [r["steps"] for r in results["maml"]["success"]] == [0, 1]
    assert all(0 <= r["mean"] <= 1 for r in results["maml"]["success"])
    assert "maml success %" in format_table(results)
    # a second method: its success paired with the first's, task by task (sampled and mean-action episodes);
    # the mean of the differences is the difference of the means
    torch.manual_seed(1)
    other = MetaRL(GaussianPolicy(2, 2, (8,)), trajectories=2, horizon=5)
    both = evaluate({"maml": learner, "other": other}, Solved(horizon=5), 6, 1, seed=0, mean_episodes=2)
    paired = both["other"]["paired"]
    for key, rates in (("success", lambda r: r["success"]), ("mean_action_success",
                                                             lambda r: r["mean_action"]["success"])):
        for row, mine, theirs in zip(paired[key], rates(both["maml"]), rates(both["other"])):
            assert row["mean"] == pytest.approx(mine["mean"] - theirs["mean"], abs=1e-12)
    table = format_table(both)
    assert "maml - other success %" in table and "maml - other success % mean action" in table
    assert "paired" not in both["maml"]
    plain = evaluate({"maml": learner}, Navigation2DTasks(horizon=5), 3, 1, seed=0)
    assert "success" not in plain["maml"] and "success" not in format_table(plain)


def test_mean_action_episodes_score_beside_the_sampled_ones():
    """Meta-World's protocol scores episodes of the mean action that the adaptation never sees: with
    ``mean_episodes`` the sampled scores are unchanged, and the mean-action return before adaptation equals
    gymnasium stepping of the policy's mean, computed here by hand in float64."""
    from fastmaml.rl import GaussianPolicy, MetaRL
    from fastmaml.rl.envs import Navigation2DTasks

    torch.manual_seed(0)
    policy = GaussianPolicy(2, 2, (8,)).double()
    learner = MetaRL(policy, trajectories=3, horizon=6)
    family = Navigation2DTasks(horizon=6)
    plain = evaluate({"maml": learner}, family, 4, 2, seed=5)
    both = evaluate({"maml": learner}, family, 4, 2, seed=5, mean_episodes=2)
    assert both["maml"]["returns"] == plain["maml"]["returns"] and "mean_action" not in plain["maml"]
    assert both["maml"]["mean_action"]["episodes"] == 2
    assert [r["steps"] for r in both["maml"]["mean_action"]["returns"]] == [0, 1, 2]
    assert "success" not in both["maml"]["mean_action"]  # 2D navigation reports no success
    assert "maml mean action" in format_table(both)

    tasks = family.sample_tasks(4, torch.Generator().manual_seed(5))  # evaluate's test tasks
    by_hand = []
    for task in tasks:
        env, total = family.make_env(task), 0.0
        obs, _ = env.reset(seed=0)
        for _ in range(6):
            with torch.no_grad():
                mean = policy(torch.as_tensor(obs, dtype=torch.float64).view(1, 2))[0][0].numpy()
            obs, reward, terminated, truncated, _ = env.step(mean)
            total += reward
            if terminated or truncated:
                break
        by_hand.append(total)
    assert both["maml"]["mean_action"]["returns"][0]["mean"] == pytest.approx(np.mean(by_hand), rel=1e-6)
    with pytest.raises(ValueError, match="mean_episodes=-1; score at least 0 episodes of the mean action"):
        evaluate({"maml": learner}, family, 4, 1, seed=5, mean_episodes=-1)


def test_a_missing_metaworld_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if the extra were not installed
    mw.benchmark.cache_clear()
    with pytest.raises(ImportError, match=r"metaworld extra\): pip install 'fastmaml\[metaworld\]'"):
        mw.ML1("reach")
    run = tmp_path / "run"
    assert main(["train", "ml1-reach", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'fastmaml[metaworld]'" in err
    assert not run.exists()
    mw.benchmark.cache_clear()


def test_bad_input_is_one_line_naming_the_fix(reach):
    with pytest.raises(ValueError, match="not a Meta-World skill; use one of .*pick-place.*push.*reach"):
        mw.ML1("pick-and-place")
    with pytest.raises(ValueError, match=r"horizon=501; use 1 to 500 steps \(Meta-World's max_path_length\)"):
        mw.ML1("reach", horizon=501)
    with pytest.raises(ValueError, match=r"threads=-1; use 0 \(every core\) or a positive count"):
        mw.ML10(threads=-1)
    tasks = reach.sample_tasks(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="diverged.*lower the inner or outer step size"):
        reach.rollout(scripted(np.full((2, 1, 4), np.nan)), tasks, 1, 2, torch.float64)


def test_ml1_reach_recipe_two_iterations_then_a_diverging_run(metaworld, tmp_path, monkeypatch, capsys):
    """The recipe trains, checkpoints and evaluates: success rates in [0, 1] per inner step beside the returns,
    on the benchmark's test goals. A run whose actions turn non-finite at its third iteration: one line, exit 2,
    the checkpoint of iteration 2 left as it was."""
    run = tmp_path / "run"
    small = ["iterations=2", "meta_batch_size=2", "trajectories=2", "horizon=20", "policy.hidden=[8]",
             "baseline_iterations=1", "eval_tasks=2", "eval_inner_steps=1", "checkpoint_every=1"]
    assert main(["train", "ml1-reach", *small, "--out", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    results = json.loads((run / "eval.json").read_text())
    for name in ("maml", "pretrained", "random"):
        assert [r["steps"] for r in results[name]["success"]] == [0, 1]
        assert all(0 <= r["mean"] <= 1 for r in results[name]["success"])
        assert f"{name} success %" in out
        mean_action = results[name]["mean_action"]  # the recipe's eval_mean_episodes: 3, Meta-World's protocol
        assert mean_action["episodes"] == 3 and all(0 <= r["mean"] <= 1 for r in mean_action["success"])
        assert f"{name} success % mean action" in out
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= line[k] <= 1 for line in lines for k in ("success_before", "success_after"))  # logged too
    # fastmaml eval on the run: the same rows, two inner steps this time
    assert main(["eval", str(run), "--steps", "2", "--mean-episodes", "0", "--out", str(tmp_path / "eval.json")]) == 0
    assert "maml success %" in capsys.readouterr().out
    again = json.loads((tmp_path / "eval.json").read_text())
    assert [r["steps"] for r in again["maml"]["success"]] == [0, 1, 2] and "mean_action" not in again["maml"]

    original, calls = mw._MetaWorldTasks.rollout, {"n": 0}

    def rollout(self, act, *args, **kwargs):
        calls["n"] += 1  # two rollouts per meta-iteration: before and after adaptation
        if calls["n"] > 4:
            def act(obs, act=act):
                actions, output = act(obs)
                return actions * float("nan"), output
        return original(self, act, *args, **kwargs)

    monkeypatch.setattr(mw._MetaWorldTasks, "rollout", rollout)
    run = tmp_path / "diverging"
    small[0] = "iterations=5"
    assert main(["train", "ml1-reach", *small, "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "diverged" in err and "Traceback" not in err
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2


@pytest.mark.parametrize("skill", ["peg-insert-side", "shelf-place"])
def test_the_batched_step_where_the_script_never_goes(metaworld, skill):
    """Reward branches the noisy script does not take, each environment's object put there (``_set_obj_xyz``,
    on both sides) every 10 steps: peg-insert-side's head in the collision box under the hole, shelf-place's
    block on the table in front of the shelf and under it; then small random moves, compared with ``env.step``."""
    from metaworld.utils import reward_utils

    from fastmaml.rl.sawyer import Lockstep

    family = mw.ML1(skill)
    tasks = family.sample_tasks(4, torch.Generator().manual_seed(0))
    own = [family.make_env(t).unwrapped for t in tasks]
    lockstep = Lockstep([family.make_env(t).unwrapped for t in tasks], [t["skill"] for t in tasks])
    assert np.array_equal(lockstep.reset(), np.stack([env.reset()[0] for env in own]))

    def spot(env, k: int) -> np.ndarray:  # where the object goes
        if skill == "peg-insert-side":  # the peg moved so that its head is at the collision box's centre
            box = [env._get_site_pos(f"{c}_corner_collision_box_1") for c in ("bottom_right", "top_left")]
            return env.data.qpos[9:12] + (box[0] + box[1]) / 2 - env._get_site_pos("pegHead")
        return env._target_pos + np.array([0.0, (-0.075, 0.03)[k % 2], 0.02 - env._target_pos[2]])

    def taken(env, obs) -> bool:  # the branch: the head inside the box; the block low in front of the target
        if skill == "peg-insert-side":
            box = [env._get_site_pos(f"{c}_corner_collision_box_1") for c in ("bottom_right", "top_left")]
            return reward_utils.rect_prism_tolerance(env._get_site_pos("pegHead"), box[0], box[1]) != 1.0
        obj, target = obs[4:7], env._target_pos
        return 0 < obj[2] < 0.24 and abs(obj[0] - target[0]) < 0.15 and target[1] - 0.15 < obj[1] < target[1]

    rng, hits = np.random.default_rng(0), 0
    for t, actions in enumerate(rng.uniform(-0.3, 0.3, (40, 4, 4))):
        if t % 10 == 0:
            for env, twin in zip(own, lockstep.envs):
                position = spot(env, t // 10)
                env._set_obj_xyz(position.copy())
                twin._set_obj_xyz(position.copy())
        steps = [env.step(a) for env, a in zip(own, actions)]
        obs, rewards, success = lockstep.step(actions)
        np.testing.assert_allclose(obs, np.stack([s[0] for s in steps]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rewards, [s[1] for s in steps], rtol=0, atol=1e-12)
        assert success.tolist() == [bool(s[4]["success"]) for s in steps]
        hits += sum(taken(env, s[0]) for env, s in zip(own, steps))
    assert hits >= 10


def test_ml10_episodes_side_by_side_are_gymnasium_s(metaworld):
    """ML10's ten training skills, all batched: a task's episodes side by side on copies of its simulation, each
    trajectory gymnasium's step for step (sweep's live pads and basketball's live goal read from the copy)."""
    family = mw.ML10(horizon=20, threads=2)
    tasks = family.sample_tasks(10, torch.Generator().manual_seed(3))
    assert len({t["skill"] for t in tasks}) == 10
    replay = np.random.default_rng(0).uniform(-1.5, 1.5, (20, 10, 2, 4))
    episodes = family.rollout(scripted(replay), tasks, 2, 20, torch.float64)
    for i, task in enumerate(tasks):
        env = family.make_env(task)
        for j in range(2):
            obs, _ = env.reset()
            for t in range(20):
                np.testing.assert_allclose(episodes.observations[i, j, t].numpy(), obs, rtol=0, atol=1e-12)
                obs, reward, *_ = env.step(np.clip(replay[t, i, j], -1, 1))
                assert reward == pytest.approx(episodes.rewards[i, j, t].item(), rel=0, abs=1e-12), (task, j, t)


def test_the_batched_step_beside_a_skill_meta_world_steps(metaworld):
    """ML10's training skills batched beside a skill without a batched reward (assembly, through its own
    ``env.step``), in one call and across a reset; giving copies of the simulation (datas) is then an error."""
    from fastmaml.rl.sawyer import Lockstep

    ml10, assembly = mw.ML10(), mw.ML1("assembly")
    tasks = [(ml10, task) for task in ml10.sample_tasks(10, torch.Generator().manual_seed(0))]
    tasks.append((assembly, assembly.sample_tasks(1, torch.Generator().manual_seed(0))[0]))
    own = [family.make_env(t).unwrapped for family, t in tasks]
    lockstep = Lockstep([family.make_env(t).unwrapped for family, t in tasks], [t["skill"] for _, t in tasks])
    assert sorted(lockstep.groups) == sorted(metaworld.env_dict.ML10_V3["train"]) and lockstep.others == [10]
    assert np.array_equal(lockstep.reset(), np.stack([env.reset()[0] for env in own]))
    for t, actions in enumerate(np.random.default_rng(0).uniform(-1, 1, (40, 11, 4))):
        if t == 25:  # a second episode: the batched skills restore their start, assembly resets
            assert np.array_equal(lockstep.reset(), np.stack([env.reset()[0] for env in own]))
        steps = [env.step(a) for env, a in zip(own, actions)]
        obs, rewards, success = lockstep.step(actions)
        np.testing.assert_allclose(obs, np.stack([s[0] for s in steps]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rewards, [s[1] for s in steps], rtol=0, atol=1e-12)
        assert success.tolist() == [bool(s[4]["success"]) for s in steps]
    import mujoco

    with pytest.raises(ValueError, match="assembly-v3 steps through Meta-World's env.step.*give datas only"):
        Lockstep(own[-2:], [tasks[-2][1]["skill"], "assembly-v3"], datas=[mujoco.MjData(e.model) for e in own[-2:]])


def test_a_copy_that_mujoco_resets_is_a_diverged_run(metaworld):
    """Side by side, each episode simulates its own copy: when MuJoCo resets one copy mid-episode (unstable: a
    velocity of 1e20 written into the second episode's copy before the third step), the rollout stops with the
    one-line divergence error instead of training on a restarted episode; the other copies never hide it."""
    family = mw.ML1("reach", horizon=5)
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    family.rollout(scripted(np.zeros((5, 2, 3, 4))), tasks, 3, 5, torch.float64)  # builds the copies, finite
    copy = next(iter(family._datas.values()))[1]
    calls = iter(range(5))

    def act(obs):
        if next(calls) == 2:
            copy.qvel[:] = 1e20
        a = torch.zeros(*obs.shape[:2], 4, dtype=obs.dtype)
        return a, (a, a)

    with pytest.raises(ValueError, match="diverged.*lower the inner or outer step size"):
        family.rollout(act, tasks, 3, 5, torch.float64)
