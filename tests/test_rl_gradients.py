"""Meta-RL gradients in float64 against independent computations: a plain ``autograd.grad(create_graph=True)``
loop with torch.distributions, central finite differences, an explicit Hessian of the KL."""

import pytest
import torch

pytest.importorskip("gymnasium")

from fastmaml.core.rules import adam, meta_sgd, momentum, sgd  # noqa: E402
from fastmaml.rl import GaussianPolicy, MetaRL  # noqa: E402
from fastmaml.rl.envs import Navigation2DTasks  # noqa: E402
from fastmaml.rl.trpo import (  # noqa: E402
    TRPOConfig, _conjugate_gradient, conjugate_gradient, fisher_vector_product, flat, trpo_step,
)

LR = 0.5


def _meta_batch(execution="vmap", first_order=False, inner_steps=1, hidden=(6,), rule=None):
    torch.manual_seed(0)
    policy = GaussianPolicy(2, 2, hidden, activation="tanh", init_std=0.5).double()
    learner = MetaRL(policy, inner_lr=LR, inner_steps=inner_steps, first_order=first_order, trajectories=3,
                     horizon=5, execution=execution, rule=rule).double()
    family = Navigation2DTasks()
    generator = torch.Generator().manual_seed(1)
    tasks = family.sample_tasks(3, generator)
    train, valid = learner.sample_meta_batch(family, tasks, generator)
    return learner, train, valid


def _reference_surrogate(policy, params, train, valid, first_order=False):
    """The surrogate by hand: per-task loop, torch.distributions, autograd.grad(create_graph=True)."""
    names = list(params)

    def dist(p, obs):
        hidden = torch.tanh(obs @ p["mean.0.weight"].T + p["mean.0.bias"])
        mean = hidden @ p["mean.2.weight"].T + p["mean.2.bias"]
        return torch.distributions.Normal(mean, p["log_std"].exp())

    losses, kls = [], []
    for i in range(valid.observations.shape[0]):
        fast = dict(params)
        for episodes in train:
            obs, actions, adv, mask = (episodes.observations[i], episodes.actions[i], episodes.advantages[i],
                                       episodes.mask[i])
            inner = -(dist(fast, obs).log_prob(actions).sum(-1) * adv * mask).sum() / mask.sum()
            grads = torch.autograd.grad(inner, [fast[n] for n in names], create_graph=not first_order)
            fast = {n: fast[n] - LR * g for n, g in zip(names, grads)}
        obs, actions, adv, mask = valid.observations[i], valid.actions[i], valid.advantages[i], valid.mask[i]
        new = dist(fast, obs)
        old = torch.distributions.Normal(valid.outputs[0][i], valid.outputs[1][i].exp())
        ratio = torch.exp(new.log_prob(actions).sum(-1) - old.log_prob(actions).sum(-1))
        losses.append(-(ratio * adv * mask).sum() / mask.sum())
        kls.append((torch.distributions.kl_divergence(old, new).sum(-1) * mask).sum() / mask.sum())
    return torch.stack(losses).mean(), torch.stack(kls).mean()


def _leaves(learner):
    return {n: p.detach().clone().requires_grad_(True) for n, p in learner.params().items()}


@pytest.mark.parametrize("execution", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_plain_autograd(execution, first_order):
    learner, train, valid = _meta_batch(execution, first_order)
    params = _leaves(learner)
    loss, kl = learner.surrogate(params, train, valid)
    got = torch.autograd.grad(loss, list(params.values()))
    ref_loss, ref_kl = _reference_surrogate(learner.policy, params, train, valid, first_order)
    want = torch.autograd.grad(ref_loss, list(params.values()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl, ref_kl, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    assert flat(got).abs().max() > 1e-4  # a real gradient, not zeros on both sides


def test_second_order_differs_from_first_order():
    learner, train, valid = _meta_batch()
    params = _leaves(learner)
    exact = torch.autograd.grad(learner.surrogate(params, train, valid)[0], list(params.values()))
    learner.first_order = True
    first = torch.autograd.grad(learner.surrogate(params, train, valid)[0], list(params.values()))
    assert (flat(exact) - flat(first)).abs().max() > 1e-3 * flat(exact).abs().max()


RULES = {"sgd": lambda: sgd(LR), "momentum": lambda: momentum(LR, beta=0.5), "adam": lambda: adam(0.05),
         "meta_sgd": lambda: meta_sgd(LR)}


@pytest.mark.parametrize("inner_steps,rule", [(1, "sgd"), (2, "sgd"), (2, "momentum"), (2, "adam"),
                                              (2, "meta_sgd")])
def test_meta_gradient_matches_finite_differences(inner_steps, rule):
    # any core UpdateRule is the RL inner step; Meta-SGD's learned rates are meta-parameters too
    learner, train, valid = _meta_batch(inner_steps=inner_steps, rule=RULES[rule]())
    params = {n: p.detach().clone().requires_grad_(True) for n, p in learner.meta_params().items()}
    assert (rule == "meta_sgd") == any(n.startswith("rule:") for n in params)
    loss, _ = learner.surrogate(params, train, valid)
    grad = flat(torch.autograd.grad(loss, list(params.values())))
    direction = torch.randn(grad.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eps = 1e-6

    def at(sign):
        shifted, start = {}, 0
        for n, p in params.items():
            shifted[n] = p.detach() + sign * eps * direction[start:start + p.numel()].view_as(p)
            start += p.numel()
        return learner.surrogate(shifted, train, valid)[0].item()

    numeric = (at(1) - at(-1)) / (2 * eps)
    assert abs(numeric - float(grad @ direction)) < 1e-6 * max(1.0, abs(numeric))
    assert abs(numeric) > 1e-4


@pytest.mark.parametrize("rule", ["adam", "meta_sgd"])
def test_rules_vmap_and_loop_agree(rule):
    grads = []
    for execution in ("vmap", "loop"):
        learner, train, valid = _meta_batch(execution, inner_steps=2, rule=RULES[rule]())
        params = {n: p.detach().clone().requires_grad_(True) for n, p in learner.meta_params().items()}
        grads.append(flat(torch.autograd.grad(learner.surrogate(params, train, valid)[0], list(params.values()))))
        assert learner.mapper.execution == execution
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_fisher_vector_product_matches_explicit_hessian_through_adaptation():
    learner, train, valid = _meta_batch(hidden=(3,))
    params = _leaves(learner)
    shapes = {n: p.shape for n, p in params.items()}

    def kl_of(vector):
        unpacked, start = {}, 0
        for n, shape in shapes.items():
            size = torch.Size(shape).numel()
            unpacked[n] = vector[start:start + size].view(shape)
            start += size
        return _reference_surrogate(learner.policy, unpacked, train, valid)[1]

    theta = flat(params.values()).detach()
    hessian = torch.autograd.functional.hessian(kl_of, theta)
    _, kl = learner.surrogate(params, train, valid)
    fvp = fisher_vector_product(kl, params, damping=1e-3)
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fvp(v), hessian @ v + 1e-3 * v, rtol=1e-8, atol=1e-10)
    # the Gauss-Newton product TRPO uses: K^T H_out K, the same Hessian at the old policy
    loss, gauss_newton = learner.fisher(params, train, valid)
    torch.testing.assert_close(loss, learner.surrogate(params, train, valid)[0], rtol=1e-12, atol=1e-14)
    for seed in (4, 5):
        v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(gauss_newton(v), hessian @ v, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(hessian).min() > -1e-10  # a Fisher: positive semi-definite at the old policy
    assert hessian.abs().max() > 1e-3


@pytest.mark.parametrize("first_order,inner_steps", [(False, 2), (True, 1)])
def test_gauss_newton_fvp_matches_double_backward(first_order, inner_steps):
    learner, train, valid = _meta_batch(first_order=first_order, inner_steps=inner_steps, hidden=(5,))
    params = _leaves(learner)
    _, kl = learner.surrogate(params, train, valid)
    double_backward = fisher_vector_product(kl, params, damping=0.0)
    _, gauss_newton = learner.fisher(params, train, valid)
    v = torch.randn(flat(params.values()).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(gauss_newton(v), double_backward(v), rtol=1e-8, atol=1e-10)


def test_gauss_newton_fvp_with_a_fixed_log_std():
    # a policy output that does not depend on the meta-parameters (a log-std kept fixed) has a zero Jacobian
    learner, train, valid = _meta_batch(hidden=(5,))
    learner.policy.log_std.requires_grad_(False)
    params = _leaves(learner)
    assert "log_std" not in params
    _, kl = learner.surrogate(params, train, valid)
    double_backward = fisher_vector_product(kl, params, damping=0.0)
    _, gauss_newton = learner.fisher(params, train, valid)
    v = torch.randn(flat(params.values()).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(gauss_newton(v), double_backward(v), rtol=1e-8, atol=1e-10)


def test_conjugate_gradient_solves_a_positive_definite_system():
    a = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iters=6), torch.linalg.solve(a, b))
    # TRPO's curvature x^T A x from CG's residual (one product fewer), here before convergence
    x, r = _conjugate_gradient(lambda v: a @ v, b, iters=3)
    assert r.norm() > 1e-3
    torch.testing.assert_close(x @ (b - r), x @ (a @ x), rtol=1e-12, atol=0)


def test_trpo_step_improves_the_surrogate_within_the_kl_bound():
    learner, train, valid = _meta_batch(hidden=(8,))
    config = TRPOConfig(max_kl=1e-3)

    def objective(p):
        return learner.surrogate(p, train, valid)

    new, record = trpo_step(objective, learner.params(), config)
    assert record["ls_step"] < config.ls_steps
    # The Gauss-Newton FVP and CG's own curvature take the same step as double backward. Few CG iterations:
    # near convergence CG amplifies rounding differences of 1e-16 in the products to 1e-4 in the step.
    damped = TRPOConfig(max_kl=1e-3, cg_iters=5)
    reference, reference_record = trpo_step(objective, learner.params(), damped)
    fast, fast_record = trpo_step(objective, learner.params(), damped, fisher=lambda p: learner.fisher(p, train, valid))
    assert fast_record["ls_step"] == reference_record["ls_step"] < damped.ls_steps
    for name in new:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-9, atol=1e-11)
        assert not torch.equal(fast[name], learner.params()[name])
    with torch.no_grad():
        loss, kl = objective(new)
        before, kl_before = objective(learner.params())
    assert kl_before.item() == pytest.approx(0.0, abs=1e-12)
    assert 0 < kl.item() < config.max_kl
    assert loss.item() < before.item()
    assert record["kl"] == pytest.approx(kl.item())


@pytest.mark.parametrize("trajectories, expected", [(4, "vmap"), (10, "loop")])
def test_auto_execution_is_settled_on_support_and_query(trajectories, expected):
    """2 x 100-wide policy, 100 steps: 4 trajectories are 800 rows per task (80,000 activations, vmap);
    10 are 2,000 rows (support 1,000 + query 1,000: 200,000, the loop), though the support alone is
    100,000, which the inner step's first mapping would have seen."""
    learner = MetaRL(GaussianPolicy(2, 2, (100, 100)), trajectories=trajectories, horizon=100)
    family, generator = Navigation2DTasks(), torch.Generator().manual_seed(0)
    learner.sample_meta_batch(family, family.sample_tasks(2, generator), generator)
    assert learner.mapper.execution == expected
