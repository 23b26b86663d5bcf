"""A step budget per task (``budget=steps``): maml_rl's batch of ``fast_batch_size * max_path_length`` steps,
in as many complete episodes as it takes, checked on episodes of known lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

gymnasium = pytest.importorskip("gymnasium")

from fastmaml.cli import main  # noqa: E402
from fastmaml.rl import CategoricalPolicy, MetaRL  # noqa: E402
from fastmaml.rl import config as rlcfg  # noqa: E402
from fastmaml.rl.baseline import with_advantages  # noqa: E402
from fastmaml.rl.episodes import Episodes  # noqa: E402
from fastmaml.rl.objectives import pack_target, pg_loss  # noqa: E402
from fastmaml.rl.sampler import collect  # noqa: E402

HORIZON, TRAJECTORIES = 10, 4
LENGTHS = [3, 10, 1, 7, 12]  # 10 and 12: episodes the horizon ends, never early


class Fall(gymnasium.Env):
    """An episode that ends (terminated) after ``length`` steps whatever the actions; reward: the action."""

    def __init__(self, length: int) -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t / 10.0, self.length / 10.0])

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= self.length, False, {}


class FallTasks:
    def __init__(self, lengths=tuple(LENGTHS)) -> None:
        self.lengths = list(lengths)

    def sample_tasks(self, n, generator):
        return [{"length": self.lengths[i % len(self.lengths)]} for i in range(n)]

    def make_env(self, task):
        return Fall(task["length"])


def policy() -> CategoricalPolicy:
    torch.manual_seed(0)
    return CategoricalPolicy(2, 2, hidden=(8,)).double()


def sample(budget: str, seed: int = 1, lengths=tuple(LENGTHS)) -> tuple[Episodes, torch.Generator]:
    net, family = policy(), FallTasks(lengths)
    generator = torch.Generator().manual_seed(seed)
    tasks = family.sample_tasks(len(lengths), generator)
    params = dict(net.named_parameters())
    return collect(family, net, params, tasks, TRAJECTORIES, HORIZON, generator, budget=budget), generator


def test_each_task_gets_the_budget_in_complete_episodes_as_maml_rls_sampler_does():
    """Episodes of length L: ceil(budget / L) of them (the count of complete episodes one environment runs
    until it has the budget), so a task ends between the budget and the budget plus one episode; episodes
    the horizon ends are not topped up; the rest of the rows are padding."""
    episodes, _ = sample("steps")
    budget = TRAJECTORIES * HORIZON
    lengths = [min(length, HORIZON) for length in LENGTHS]
    ran = episodes.ran()
    assert ran.sum(1).tolist() == [-(-budget // length) for length in lengths] == [14, 4, 40, 6, 4]
    steps = episodes.mask.sum((1, 2))
    assert steps.tolist() == [42, 40, 40, 42, 40]
    assert all(budget <= s < budget + length for s, length in zip(steps.tolist(), lengths))
    # every episode that ran runs its whole length from the start; padding is all zero
    for task, length in enumerate(lengths):
        for episode in range(episodes.mask.shape[1]):
            row, rewards = episodes.mask[task, episode], episodes.rewards[task, episode]
            expected = (torch.arange(HORIZON) < length).double() * ran[task, episode]
            assert torch.equal(row, expected)
            assert not bool((rewards * (1 - row)).any())
            if ran[task, episode]:  # the observation counts the episode's own steps from 0
                counts = torch.arange(length, dtype=torch.float64) / 10.0
                assert torch.equal(episodes.observations[task, episode, :length, 0], counts)


def test_a_family_whose_episodes_never_end_early_gets_the_same_episodes_either_way():
    """No task runs short, so no round is added: the same episodes, bit for bit, and the same draws left."""
    full = (10, 12, 10)
    steps, after_steps = sample("steps", lengths=full)
    plain, after_plain = sample("trajectories", lengths=full)
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(steps, name), getattr(plain, name)), name
    assert torch.equal(after_steps.get_state(), after_plain.get_state())


def test_padding_changes_no_advantage_loss_or_score():
    """Per task, the padded meta-batch's advantages, inner loss and mean return equal those of the task's own
    episodes alone (float64): the linear baseline, the normalisation and the masked means skip padding."""
    episodes, _ = sample("steps")
    padded = with_advantages(episodes, 0.99)
    net = policy()
    params = dict(net.named_parameters())
    for task in range(len(LENGTHS)):
        ran = padded.ran()[task] > 0
        alone = Episodes(*(value[task:task + 1, ran] if torch.is_tensor(value) else None
                           for value in (episodes.observations, episodes.actions, episodes.rewards, episodes.mask,
                                         episodes.outputs)))
        alone = with_advantages(alone, 0.99)
        assert torch.allclose(padded.advantages[task, ran], alone.advantages[0], rtol=1e-10, atol=1e-12)
        one = padded.task(task)
        loss = pg_loss(net(one.observations), pack_target(padded)[task])
        own = pg_loss(net(alone.observations[0]), pack_target(alone)[0])
        torch.testing.assert_close(loss, own, rtol=1e-12, atol=1e-14)
        returns = alone.returns()[0]
        torch.testing.assert_close(padded.per_task_mean(padded.returns())[task], returns.mean())
    every = torch.cat([padded.returns()[t][padded.ran()[t] > 0] for t in range(len(LENGTHS))])
    torch.testing.assert_close(padded.pooled_mean(padded.returns()), every.mean())
    assert params  # the policy the losses read is the sampling one


def test_a_meta_rl_run_with_a_step_budget_trains_and_evaluates(tmp_path):
    """Through the CLI on a user's family whose episodes end early: the recipe option reaches the learner, the
    meta-batch's inner step and TRPO step run on padded episodes, and the meta-test scores them."""
    recipe, out = tmp_path / "fall.yaml", tmp_path / "run"
    recipe.write_text(yaml.safe_dump({"kind": "rl", "env": "test_rl_budget:FallTasks", "budget": "steps"}))
    assert main(["train", str(recipe), "trajectories=2", "horizon=10", "meta_batch_size=5", "iterations=2",
                 "baseline_iterations=1", "eval_tasks=5", "eval_inner_steps=1", "policy.hidden=[8]", "--out",
                 str(out), "--no-progress"]) == 0
    assert rlcfg.load(out / "config.yaml").budget == "steps"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(line["return_after"]) for line in lines)
    scores = json.loads((out / "eval.json").read_text())
    assert {"maml", "pretrained"} <= set(scores)


def test_an_unknown_budget_is_a_one_line_error():
    unknown = r"budget='episodes'; use one of trajectories \(that many episodes per task\), steps \(trajectories"
    with pytest.raises(ValueError, match=unknown):
        rlcfg.resolve("nav2d", ["budget=episodes"])
    with pytest.raises(ValueError, match=unknown):
        collect(FallTasks(), policy(), dict(policy().named_parameters()), [{"length": 3}], 1, 5,
                torch.Generator(), budget="episodes")
    with pytest.raises(ValueError, match=unknown):
        MetaRL(policy(), budget="episodes")
