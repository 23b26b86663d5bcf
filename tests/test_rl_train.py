"""Meta-RL end to end at toy sizes: the CLI (train, eval, plot, resume), ``fm.load(...).adapt/act``, a
user's own task family through the generic gymnasium sampler, and bad input."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import yaml

gymnasium = pytest.importorskip("gymnasium")

import fastmaml as fm  # noqa: E402
from fastmaml.cli import main  # noqa: E402
from fastmaml.rl import CategoricalPolicy, GaussianPolicy, MetaRL  # noqa: E402
from fastmaml.rl import config as rlcfg  # noqa: E402
from fastmaml.rl import train as rltrain  # noqa: E402
from fastmaml.rl.envs import Navigation2D, Navigation2DTasks  # noqa: E402
from fastmaml.rl.evaluate import evaluate  # noqa: E402
from fastmaml.rl.sampler import collect  # noqa: E402
from fastmaml.rl.trpo import TRPOConfig, trpo_step  # noqa: E402

TINY = ["iterations=2", "meta_batch_size=3", "trajectories=4", "horizon=10", "policy.hidden=[8]",
        "baseline_iterations=1", "eval_tasks=3", "eval_inner_steps=1", "checkpoint_every=1", "log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "runs" / "nav2d"
    assert main(["train", "nav2d", *TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_recipe_is_the_papers_protocol():
    config = rlcfg.resolve("nav2d")
    assert (config.meta_batch_size, config.trajectories, config.horizon, config.inner_lr, config.max_kl,
            config.cg_iters, config.cg_damping, config.ls_ratio, config.ls_steps, config.gamma,
            config.iterations, config.policy.hidden, config.policy.activation) == \
        (20, 20, 100, 0.1, 0.01, 10, 1e-5, 0.8, 15, 0.99, 500, (100, 100), "relu")
    # the paper's MDP (maml_rl's normalize): in raw action units the one-step return drifts down with more
    # meta-training (benchmarks/nav2d_drift.py)
    assert config.env_options == {"normalized_actions": True}


def test_train_writes_a_run_and_evaluates_it(run):
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "checkpoint.pt", "metrics.jsonl", "baselines.pt",
                                               "eval.json"}
    results = json.loads((run / "eval.json").read_text())
    assert set(results) == {"maml", "pretrained", "random", "oracle"}
    for result in results.values():
        assert [r["steps"] for r in result["returns"]] == [0, 1]
        assert all(math.isfinite(r["mean"]) and r["ci95"] >= 0 for r in result["returns"])
    # paired differences against the meta-learned policy, task by task: their mean is the difference of means
    for name in ("pretrained", "random"):
        paired = results[name]["paired"]
        assert paired["minuend"] == "maml"
        for row, mine, theirs in zip(paired["returns"], results["maml"]["returns"], results[name]["returns"]):
            assert row["mean"] == pytest.approx(mine["mean"] - theirs["mean"], abs=1e-9)
            assert row["ci95"] >= 0
    assert "paired" not in results["maml"] and "paired" not in results["oracle"]
    # the oracle walks straight to the goal: better than any of the untrained policies
    assert results["oracle"]["returns"][0]["mean"] > results["random"]["returns"][0]["mean"]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history] == [1, 2]


def test_eval_and_plot_commands(run, capsys):
    assert main(["eval", str(run), "--tasks", "2", "--steps", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results["maml"]["returns"]) == 3
    assert main(["plot", str(run)]) == 0
    assert (run / "plot.png").stat().st_size > 20_000


def test_the_meta_test_adapts_on_eval_trajectories(run, tmp_path, monkeypatch):
    """``eval_trajectories`` (the paper's goal-velocity test: 20 where training used 10) sets the episodes
    per inner step of every method at meta-test; 0 keeps ``trajectories``. ``eval_mean_episodes`` (or the
    argument, ``fastmaml eval --mean-episodes``) reaches the evaluation."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.yaml", "checkpoint.pt", "baselines.pt"):
        (copy / name).write_bytes((run / name).read_bytes())
    seen = {}

    def record(methods, family, num_tasks, steps, seed, mean_episodes):
        seen.update({name: method.trajectories for name, method in methods.items()}, mean=mean_episodes)
        return {}

    monkeypatch.setattr(rltrain, "evaluate", record)
    rltrain.evaluate_run(copy)
    assert seen == {"maml": 4, "pretrained": 4, "random": 4, "mean": 0}
    values = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**values, "eval_trajectories": 6, "eval_mean_episodes": 3}))
    rltrain.evaluate_run(copy)
    assert seen == {"maml": 6, "pretrained": 6, "random": 6, "mean": 3}
    rltrain.evaluate_run(copy, mean_episodes=1)  # fastmaml eval --mean-episodes
    assert seen["mean"] == 1


def test_load_adapt_act_contract(run):
    learner = fm.load(run)
    assert isinstance(learner, MetaRL)
    env = Navigation2D(goal=(0.3, -0.2), normalized_actions=True)  # the recipe's MDP
    initial = learner.adapt(env, inner_steps=0, generator=torch.Generator().manual_seed(0))
    for name, p in learner.params().items():
        assert torch.equal(initial[name], p.detach())
    params = learner.adapt(env, inner_steps=1, generator=torch.Generator().manual_seed(0))
    again = learner.adapt(env, inner_steps=1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(params[n], again[n]) for n in params)  # seeded: reproducible
    assert any(not torch.equal(params[n], initial[n]) for n in params)
    obs, _ = env.reset()
    action = learner.act(params, obs)
    assert isinstance(action, np.ndarray) and action.shape == (2,)
    mean, _ = torch.func.functional_call(learner.policy, params, (torch.as_tensor(obs).unsqueeze(0),))
    np.testing.assert_allclose(action, mean[0].numpy())
    assert torch.is_tensor(learner.act(params, torch.as_tensor(obs)))


def test_resume_continues_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    overrides = [o for o in TINY if not o.startswith(("iterations", "baseline"))] + ["baseline_iterations=0"]
    assert main(["train", "nav2d", *overrides, "iterations=4", "--out", str(full), "--no-progress"]) == 0
    assert main(["train", "nav2d", *overrides, "iterations=2", "--out", str(part), "--no-progress"]) == 0
    config = yaml.safe_load((part / "config.yaml").read_text())
    config["iterations"] = 4  # the interrupted run's own config, continued further
    (part / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    a, b = torch.load(full / "checkpoint.pt"), torch.load(part / "checkpoint.pt")
    for name in a["policy"]:
        assert torch.equal(a["policy"][name], b["policy"][name]), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]


def test_kept_checkpoints_are_the_runs_own_at_those_iterations(tmp_path, capsys):
    """``keep_every=2``: snapshots/checkpoint-2.pt and -4.pt are what 2- and 4-iteration runs end with (maml_rl
    kept every 25th policy and its paper scored one of them); ``fm.load(run, 2)`` and ``fastmaml eval
    --iteration 2`` meta-test the kept one, and an iteration the run did not keep is one line listing those
    it did."""
    kept, short = tmp_path / "kept", tmp_path / "short"
    overrides = [o for o in TINY if not o.startswith(("iterations", "baseline", "checkpoint"))]
    overrides += ["baseline_iterations=0", "checkpoint_every=0"]
    assert main(["train", "nav2d", *overrides, "iterations=4", "keep_every=2", "--out", str(kept),
                 "--no-progress"]) == 0
    assert main(["train", "nav2d", *overrides, "iterations=2", "--out", str(short), "--no-progress"]) == 0
    assert sorted(p.name for p in (kept / "snapshots").iterdir()) == ["checkpoint-2.pt", "checkpoint-4.pt"]
    for snapshot, whole in (("checkpoint-2.pt", short), ("checkpoint-4.pt", kept)):
        a, b = torch.load(kept / "snapshots" / snapshot), torch.load(whole / "checkpoint.pt")
        assert all(torch.equal(a["policy"][name], b["policy"][name]) for name in a["policy"]), snapshot
    loaded, last = fm.load(kept, 2), fm.load(short)
    assert all(torch.equal(p, q) for p, q in zip(loaded.policy.parameters(), last.policy.parameters()))
    capsys.readouterr()
    assert main(["eval", str(kept), "--iteration", "2", "--tasks", "2", "--steps", "1", "--json"]) == 0
    from_snapshot = json.loads(capsys.readouterr().out)
    assert main(["eval", str(short), "--tasks", "2", "--steps", "1", "--json", "--out", str(tmp_path / "e.json")]) == 0
    assert from_snapshot["maml"]["returns"] == json.loads(capsys.readouterr().out)["maml"]["returns"]
    assert (kept / "eval-iteration2-2tasks-1steps.json").is_file() and (kept / "eval.json").is_file()
    final = (kept / "eval.json").read_text()
    rltrain.evaluate_run(kept, num_tasks=2, inner_steps=1, iteration=4)  # in Python: the run's results stay too
    assert (kept / "eval-iteration4-2tasks-1steps.json").is_file() and (kept / "eval.json").read_text() == final
    for run, message in ((kept, "no checkpoint kept at iteration 3; name one it kept: 2, 4"),
                         (short, "it kept none: train with keep_every=N")):
        assert main(["eval", str(run), "--iteration", "3"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_pretrained_baseline_resumes_exactly(tmp_path, monkeypatch, capsys):
    """SIGTERM while the pretrained baseline trains: a checkpoint of its own, a one-line message, and
    ``--resume`` finishes it bit for bit as an uninterrupted run does."""
    full, part = tmp_path / "full", tmp_path / "part"
    overrides = [o for o in TINY if not o.startswith(("iterations", "baseline", "checkpoint"))]
    overrides += ["iterations=1", "baseline_iterations=4", "checkpoint_every=10"]
    assert main(["train", "nav2d", *overrides, "--out", str(full), "--no-progress"]) == 0
    original = rltrain.meta_step

    def signalled(learner, family, config, generator, optimizer, iteration, kept):
        if not learner.inner_steps and iteration == 2:  # the baseline's second iteration
            os.kill(os.getpid(), signal.SIGTERM)
        return original(learner, family, config, generator, optimizer, iteration, kept)

    monkeypatch.setattr(rltrain, "meta_step", signalled)
    capsys.readouterr()
    assert main(["train", "nav2d", *overrides, "--out", str(part), "--no-progress"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fastmaml: interrupted at iteration 2 of the pretrained baseline's 4; resume with fastmaml train "
        f"--resume {part}")  # the signal came during iteration 2: it stops after it
    assert torch.load(part / "baseline-checkpoint.pt")["iteration"] == 2 and not (part / "baselines.pt").exists()
    monkeypatch.setattr(rltrain, "meta_step", original)
    with (part / "baseline-metrics.jsonl").open("a") as f:
        f.write('{"iteration": 3, "retu')  # a line cut off by a kill after the checkpoint: rewritten on resume
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    assert not (part / "baseline-checkpoint.pt").exists()
    a, b = torch.load(full / "baselines.pt"), torch.load(part / "baselines.pt")
    for name in ("pretrained", "random"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    # and both are the plain loop's: TRPO without an inner step, from the seeds the baseline is defined by
    config = rlcfg.load(full / "config.yaml")
    family = rltrain.build_family(config)
    policy = rltrain.build_learner(config, family, config.seed + 1).policy
    untrained = {k: v.clone() for k, v in policy.state_dict().items()}
    plain = MetaRL(policy, config.inner_lr, 0, config.first_order, config.gamma, config.gae_lambda,
                   config.trajectories, config.horizon, config.normalize_advantages, config.execution)
    generator = torch.Generator().manual_seed(config.seed + 2)
    for i in range(4):
        rltrain.meta_step(plain, family, config, generator, None, i + 1, "")
    for key, value in policy.state_dict().items():
        assert torch.equal(a["pretrained"][key], value) and torch.equal(a["random"][key], untrained[key]), key

    def lines(run):
        rows = [json.loads(line) for line in (run / "baseline-metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert len(lines(full)) == 4 and lines(full) == lines(part)
    assert json.loads((full / "eval.json").read_text()) == json.loads((part / "eval.json").read_text())


@pytest.mark.parametrize("override", ["outer=adam", "first_order=true", "execution=loop"])
def test_variants_run(tmp_path, override):
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("iterations", "baseline"))]
    assert main(["train", "nav2d", *overrides, "iterations=1", "baseline_iterations=0", override,
                 "--out", str(out), "--no-progress"]) == 0
    assert "pretrained" not in json.loads((out / "eval.json").read_text())


@pytest.mark.parametrize("outer", ["trpo", "adam"])
def test_meta_sgd_inner_rule_trains_and_keeps_its_rates(tmp_path, outer):
    # a core UpdateRule as the RL inner step: Meta-SGD's per-entry rates are meta-trained beside the
    # policy, saved in the checkpoint and restored by fm.load
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("iterations", "baseline"))]
    assert main(["train", "nav2d", *overrides, "iterations=2", "baseline_iterations=0", "inner_rule=meta_sgd",
                 f"outer={outer}", "outer_lr=0.01", "--out", str(out), "--no-progress"]) == 0
    learner = fm.load(out)
    rates = dict(learner.rule_state.items())
    assert set(rates) == {name.replace(".", "/") for name in learner.params()}
    assert any(not torch.allclose(r, torch.full_like(r, 0.1)) for r in rates.values())  # trained, not initial
    saved = torch.load(out / "checkpoint.pt")["rule"]
    assert all(torch.equal(saved[n], r.detach()) for n, r in rates.items())


def test_an_unknown_inner_rule_is_refused():
    with pytest.raises(ValueError, match="inner_rule='newton'; use one of sgd, momentum, adam, meta_sgd"):
        rlcfg.resolve("nav2d", ["inner_rule=newton"])


class Corridor(gymnasium.Env):
    """A user's own env: a walk on a line with two discrete actions, the goal a task parameter."""

    def __init__(self, goal, reward_scale=1.0, success_key=None, report_only_true=False):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.goal, self.scale, self.success_key, self.only_true = goal, reward_scale, success_key, report_only_true

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 0.1 if action == 1 else -0.1
        self.t += 1
        solved = abs(self.x - self.goal) < 0.15
        info = {self.success_key: solved} if self.success_key and (solved or not self.only_true) else {}
        return np.array([self.x], np.float32), -abs(self.x - self.goal) * self.scale, False, self.t >= 6, info


class CorridorTasks:
    def __init__(self, count=None, reward_scale=1.0, success_key=None, report_only_true=False):
        self.count, self.scale, self.success_key, self.only_true = count, reward_scale, success_key, report_only_true

    def sample_tasks(self, n, generator):
        goals = (torch.rand(n if self.count is None else self.count, generator=generator) - 0.5).tolist()
        return [{"goal": g} for g in goals]

    def make_env(self, task):
        return Corridor(task["goal"], self.scale, self.success_key, self.only_true)


@pytest.mark.parametrize("key", ["success", "is_success"])
def test_a_users_family_that_reports_success_is_scored_by_it(key):
    """The generic sampler reads ``info["success"]`` (Meta-World) or ``info["is_success"]`` (gymnasium-robotics):
    an episode succeeds where it was reported at some step, checked against the episode's own positions; the
    evaluation then reports a success rate; a family that reports nothing has none."""
    learner = MetaRL(CategoricalPolicy(1, 2, hidden=(8,)).double(), trajectories=4, horizon=6)
    family = CorridorTasks(success_key=key)
    tasks = family.sample_tasks(5, torch.Generator().manual_seed(0))
    episodes = collect(family, learner.policy, learner.params(), tasks, 4, 6, torch.Generator().manual_seed(1))
    after = episodes.observations[..., 0] + torch.where(episodes.actions == 1, 0.1, -0.1)  # x after each step
    goals = torch.tensor([task["goal"] for task in tasks], dtype=torch.float64).view(-1, 1, 1)
    # float64: every step holds its own observation, not a view of the sampler's buffer
    assert torch.allclose(episodes.observations[..., 1:, 0], after[..., :-1])
    expected = ((after - goals).abs() < 0.15).any(-1).double()
    assert episodes.success.shape == (5, 4) and torch.equal(episodes.success, expected)
    assert 0 < expected.mean() < 1  # some episodes succeed and some do not: the check has teeth
    results = evaluate({"maml": learner}, family, 3, 1, seed=0)
    assert [r["steps"] for r in results["maml"]["success"]] == [0, 1]
    plain = collect(CorridorTasks(), learner.policy, learner.params(), tasks, 2, 6, torch.Generator())
    assert plain.success is None and "success" not in evaluate({"maml": learner}, CorridorTasks(), 3, 1, 0)["maml"]
    # an environment that reports success only when true: the episodes it never reported count as unsolved
    only_true = CorridorTasks(success_key=key, report_only_true=True)
    sparse = collect(only_true, learner.policy, learner.params(), tasks, 4, 6, torch.Generator().manual_seed(1))
    assert torch.equal(sparse.success, expected)


def test_a_run_whose_family_reports_success_logs_and_plots_it(tmp_path):
    """Through the CLI, a user's family (``env=module:Factory``) that reports success: the metrics lines carry
    the success rate before and after the step, ``eval.json`` the meta-test's, and the plot gains a success
    panel beside each return panel (four panels: twice the width of a family without success)."""
    pytest.importorskip("matplotlib")
    widths = {}
    for key in ("success", None):
        out = tmp_path / f"run-{key}"
        recipe = tmp_path / f"corridor-{key}.yaml"  # a recipe of the user's own, as docs/how-to shows
        recipe.write_text(yaml.safe_dump({"kind": "rl", "env": "test_rl_train:CorridorTasks",
                                          "env_options": {"success_key": key} if key else {}}))
        overrides = [o for o in TINY if not o.startswith(("baseline", "horizon"))]
        assert main(["train", str(recipe), *overrides, "baseline_iterations=0", "horizon=6", "--out", str(out),
                     "--no-progress"]) == 0
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(("success_after" in line) == bool(key) for line in lines)
        assert ("success" in json.loads((out / "eval.json").read_text())["maml"]) == bool(key)
        assert main(["plot", str(out)]) == 0
        png = (out / "plot.png").read_bytes()
        widths[key] = int.from_bytes(png[16:20], "big")  # the PNG header's width
    assert widths["success"] == 2 * widths[None]
    # the panels draw the run's numbers: success by step from eval.json, the curve from metrics.jsonl
    import matplotlib.pyplot as plt

    from fastmaml.rl.plot import success_curve_panel, success_panel

    results = json.loads((out.parent / "run-success" / "eval.json").read_text())
    history = [json.loads(line) for line in (out.parent / "run-success" / "metrics.jsonl").read_text().splitlines()]
    fig, (by_step, curve) = plt.subplots(1, 2)
    success_panel(by_step, results)
    success_curve_panel(curve, history)
    drawn = {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in by_step.containers}
    assert drawn == {name: [pytest.approx(100 * r["mean"]) for r in result["success"]]
                     for name, result in results.items() if "success" in result}
    assert [list(line.get_ydata()) for line in curve.get_lines()] == [
        [pytest.approx(100 * r[k]) for r in history] for k in ("success_before", "success_after")]
    plt.close(fig)


def test_a_users_own_family_trains_through_the_generic_sampler():
    learner = MetaRL(CategoricalPolicy(1, 2, hidden=(8,)).double(), trajectories=3, horizon=6)
    family = CorridorTasks()
    generator = torch.Generator().manual_seed(0)
    train, valid = learner.sample_meta_batch(family, family.sample_tasks(2, generator), generator)
    assert valid.observations.shape == (2, 3, 6, 1) and valid.actions.dtype == torch.int64
    new, record = trpo_step(lambda p: learner.surrogate(p, train, valid), learner.params(), TRPOConfig())
    assert record["ls_step"] < 15 and all(not torch.equal(new[n], p) for n, p in learner.params().items())
    params = learner.adapt(Corridor(0.3), inner_steps=1)
    assert learner.act(params, np.zeros(1, np.float32)) in (0, 1)


def test_a_box_family_without_rollout_matches_the_navigation_numbers():
    class Plain:  # Navigation2D through the generic gymnasium sampler only
        def sample_tasks(self, n, generator):
            return Navigation2DTasks().sample_tasks(n, generator)

        def make_env(self, task):
            return Navigation2D(goal=task["goal"], horizon=5)

    learner = MetaRL(GaussianPolicy(2, 2, (8,)), trajectories=2, horizon=5)
    generator = torch.Generator().manual_seed(0)
    tasks = Plain().sample_tasks(2, generator)
    episodes = learner.sample(Plain(), tasks, learner.params(), generator, batched=False)
    for i, task in enumerate(tasks):  # every recorded reward is -distance after the clipped move
        position = episodes.observations[i, :, :, :] + episodes.actions[i].clamp(-0.1, 0.1)
        expected = -(position - torch.tensor(task["goal"])).norm(dim=-1)
        torch.testing.assert_close(episodes.rewards[i], expected, atol=1e-5, rtol=0)


def test_spaces_that_do_not_fit_the_policy_are_refused():
    learner = MetaRL(GaussianPolicy(2, 2, (8,)))
    with pytest.raises(ValueError, match="observations of size 1"):
        learner.adapt(Corridor(0.1))
    wrong_actions = Navigation2D(goal=(0.1, 0.1))
    wrong_actions.action_space = gymnasium.spaces.Discrete(3)
    with pytest.raises(ValueError, match="3 discrete actions"):
        learner.adapt(wrong_actions)
    with pytest.raises(ValueError, match="action_dim=2"):
        MetaRL(GaussianPolicy(2, 3, (8,))).adapt(Navigation2D(goal=(0.1, 0.1)))


def test_non_finite_rewards_and_empty_families_are_refused():
    learner = MetaRL(CategoricalPolicy(1, 2, hidden=(8,)), trajectories=2, horizon=6)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="non-finite reward"):
        learner.sample_meta_batch(CorridorTasks(reward_scale=float("nan")), [{"goal": 0.1}], generator)
    with pytest.raises(ValueError, match="yielded 0 tasks"):
        rltrain.sample_tasks(CorridorTasks(count=0), 2, generator)


@pytest.mark.parametrize("override, message", [
    ("horizon=0", "horizon=0"), ("trajectories=0", "trajectories=0"), ("outer=sgd", "outer='sgd'"),
    ("max_kl=0", "max_kl=0"), ("env=nowhere:Family", "cannot be imported"), ("polcy.hidden=[3]", "did you mean"),
    ("eval_trajectories=-1", "eval_trajectories=-1"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["train", "nav2d", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nproc_per_node_on_a_meta_rl_recipe_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "nav2d", "--nproc-per-node", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "threads=2" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_failing_run_keeps_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("iterations")]
    calls = {"n": 0}
    original = rltrain.meta_step

    def failing(learner, family, config, generator, optimizer, iteration, kept):
        calls["n"] += 1
        if calls["n"] == 3:
            learner.policy.log_std.data.fill_(float("nan"))  # what a diverged update would leave
            rltrain.check_finite(float("nan"), [], iteration, kept, "meta-RL update", rltrain.RATES,
                                 rltrain.SOURCE)
        return original(learner, family, config, generator, optimizer, iteration, kept)

    monkeypatch.setattr(rltrain, "meta_step", failing)
    assert main(["train", "nav2d", *overrides, "iterations=5", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "iteration 2) is intact" in err
    saved = torch.load(out / "checkpoint.pt")
    assert saved["iteration"] == 2 and bool(saved["policy"]["log_std"].isfinite().all())
