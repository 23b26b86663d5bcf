"""Navigation2D against hand-computed steps, the batched path against the gymnasium env, the linear
baseline against numpy's lstsq, GAE against a plain reverse loop."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from fastmaml.rl.baseline import discounted, fit_values, with_advantages  # noqa: E402
from fastmaml.rl.envs import Navigation2D, Navigation2DTasks  # noqa: E402
from fastmaml.rl.episodes import Episodes  # noqa: E402


def test_navigation2d_by_hand():
    env = Navigation2D(goal=(0.3, -0.2))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0.0, 0.0]
    assert env.observation_space.shape == (2,) and np.allclose(env.action_space.low, -0.1)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.05]))  # x clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-6)
    assert reward == pytest.approx(-math.hypot(0.1 - 0.3, -0.05 + 0.2))
    assert not terminated and not truncated
    env.step(np.array([0.1, -0.1]))  # (0.2, -0.15)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.1, -0.05]))  # (0.3, -0.2): at the goal
    assert reward == pytest.approx(0.0, abs=1e-12) and terminated and not truncated


def test_navigation2d_truncates_after_the_horizon():
    env = Navigation2D(goal=(0.5, 0.5), horizon=100)
    env.reset()
    ends = [env.step(np.array([-0.1, 0.0]))[3] for _ in range(100)]
    assert ends == [False] * 99 + [True]


def test_normalized_actions_are_rllabs_normalize():
    # the paper's MDP: actions in [-1, 1]^2, the move 0.1 times the clipped action
    env = Navigation2D(goal=(0.3, -0.2), normalized_actions=True)
    assert np.allclose(env.action_space.low, -1.0) and np.allclose(env.action_space.high, 1.0)
    env.reset()
    obs, reward, terminated, _, _ = env.step(np.array([5.0, -0.5]))  # x clipped to 1: a move of 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-6)
    assert reward == pytest.approx(-math.hypot(0.1 - 0.3, -0.05 + 0.2)) and not terminated
    family = Navigation2DTasks(normalized_actions=True)
    assert family.make_env({"goal": (0.3, -0.2)}).action_space.high.tolist() == [1.0, 1.0]
    obs = torch.tensor([[[0.0, 0.0], [0.29, -0.2]]], dtype=torch.float64)
    torch.testing.assert_close(family.oracle_action([{"goal": (0.3, -0.2)}], obs),
                               torch.tensor([[[1.0, -1.0], [0.1, 0.0]]], dtype=torch.float64))


@pytest.mark.parametrize("normalized", [False, True])
def test_batched_rollout_equals_the_gymnasium_env_step_for_step(normalized):
    family = Navigation2DTasks(normalized_actions=normalized)
    scale = 10.0 if normalized else 1.0
    tasks = family.sample_tasks(3, torch.Generator().manual_seed(0))
    tasks[1] = {"goal": (0.25, -0.15)}  # reachable exactly: that episode terminates early
    script = torch.randn(3, 2, 12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.08 * scale
    script[1, 0] = torch.tensor([[0.1, -0.1], [0.1, -0.05], [0.05, 0.0]] + [[0.1, 0.1]] * 9,
                                dtype=torch.float64) * scale
    clock = iter(range(12))

    def act(obs):
        actions = script[:, :, next(clock)]
        return actions, (actions, torch.zeros_like(actions))

    episodes = family.rollout(act, tasks, trajectories=2, horizon=12, dtype=torch.float64)
    for i, task in enumerate(tasks):
        for n in range(2):
            env = family.make_env(task)
            obs, _ = env.reset()
            done = False
            for t in range(12):
                assert episodes.mask[i, n, t].item() == (0.0 if done else 1.0)
                if done:
                    assert episodes.rewards[i, n, t].item() == 0.0
                    continue
                np.testing.assert_allclose(episodes.observations[i, n, t].numpy(), obs, atol=1e-6)
                obs, reward, terminated, truncated, _ = env.step(script[i, n, t].numpy())
                assert episodes.rewards[i, n, t].item() == pytest.approx(reward, abs=1e-9)
                done = terminated or truncated
    assert episodes.mask[1, 0].sum().item() == 3  # the scripted episode reached the goal at step 3


def test_linear_baseline_matches_numpy_lstsq():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 4, 100, 3, generator=gen, dtype=torch.float64)
    returns = torch.randn(2, 4, 100, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 4, 100, dtype=torch.float64)
    values = fit_values(obs, returns, mask, reg=1e-12)
    for i in range(2):
        o = obs[i].numpy()
        t = np.broadcast_to((np.arange(100) / 100.0)[None, :, None], (4, 100, 1))
        x = np.concatenate([o, o**2, t, t**2, t**3, np.ones_like(t)], -1).reshape(-1, 10)
        w, *_ = np.linalg.lstsq(x, returns[i].numpy().reshape(-1), rcond=None)
        np.testing.assert_allclose(values[i].numpy().reshape(-1), x @ w, rtol=1e-6, atol=1e-8)


def _reverse_loop(x, mask, factor):
    out, running = torch.zeros_like(x), torch.zeros(x.shape[:-1], dtype=x.dtype)
    for t in reversed(range(x.shape[-1])):
        running = x[..., t] * mask[..., t] + factor * running * mask[..., t]
        out[..., t] = running
    return out


@pytest.mark.parametrize("gae_lambda", [1.0, 0.9, 0.0])
def test_gae_matches_a_reverse_loop(gae_lambda):
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 6, 2, generator=gen, dtype=torch.float64)
    rewards = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 3, 6, dtype=torch.float64)
    mask[0, 1, 4:] = 0  # an episode that terminated after 4 steps
    rewards = rewards * mask
    episodes = Episodes(obs, obs, rewards, mask, (obs, obs))
    gamma = 0.9
    returns = _reverse_loop(rewards, mask, gamma)
    torch.testing.assert_close(discounted(rewards, mask, gamma), returns)
    values = fit_values(obs, returns, mask)
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = rewards + gamma * next_values - values
    expected = _reverse_loop(deltas, mask, gamma * gae_lambda)
    got = with_advantages(episodes, gamma, gae_lambda, normalize=False).advantages
    torch.testing.assert_close(got, expected * mask)
    if gae_lambda == 1.0:
        torch.testing.assert_close(got, (returns - values) * mask)


def test_policy_init_glorot_is_rllabs():
    """policy.init=glorot: Glorot-uniform weights and zero biases (rllab's MLP in the paper's code)."""
    import math

    from fastmaml.rl import config as rlcfg
    from fastmaml.rl.policies import GaussianPolicy

    torch.manual_seed(0)
    glorot, default = GaussianPolicy(20, 6, (100, 100), init="glorot"), GaussianPolicy(20, 6, (100, 100))
    layers = [m for m in glorot.mean if isinstance(m, torch.nn.Linear)]
    for layer in layers:
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert default.mean[0].bias.abs().sum() > 0  # torch's default keeps random biases
    with pytest.raises(ValueError, match="init='xavier'; use one of torch, glorot"):
        GaussianPolicy(2, 2, init="xavier")
    with pytest.raises(ValueError, match="policy.init='xavier'; use one of torch, glorot"):
        rlcfg.resolve("nav2d", ["policy.init=xavier"])


def test_baseline_fit_on_few_steps_and_many_features():
    """Ant's 125-number observation gives 254 features; a short batch gives a rank-deficient Gram matrix,
    on which MKL's threaded LU solve failed at two threads. The fit must stay finite and be the ridge solution."""
    from fastmaml.rl.baseline import features, fit_values

    torch.set_num_threads(2)  # conftest gives the count back
    g = torch.Generator().manual_seed(0)
    observations = torch.randn(2, 2, 15, 125, generator=g, dtype=torch.float64)
    returns = torch.randn(2, 2, 15, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 2, 15, dtype=torch.float64)
    mask[:, 0, 10:] = 0
    values = fit_values(observations, returns, mask)
    assert values.isfinite().all()
    x = features(observations, mask).flatten(1, 2)
    y = (returns * mask).flatten(1, 2).unsqueeze(-1)
    for i in range(2):
        gram = x[i].T @ x[i] + 1e-5 * torch.eye(x.shape[-1], dtype=torch.float64)
        expected = (x[i] @ torch.linalg.pinv(gram) @ x[i].T @ y[i]).squeeze(-1)
        torch.testing.assert_close(values[i].flatten(), expected, rtol=1e-6, atol=1e-6)
