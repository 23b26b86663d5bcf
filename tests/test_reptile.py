"""Reptile in its paper's regime (arXiv:1803.02999): inner Adam on minibatches, annealed outer step,
each against an independent float64 computation."""

import pytest
import torch
import torch.nn.functional as F

import fastmaml as fm
from algo_helpers import batch, grads, mlp
from fastmaml.algorithms import Reptile, build
from fastmaml.algorithms.reptile import minibatch_rows


def test_minibatch_rows_cover_every_example_once_per_pass():
    for examples, size in ((50, 10), (20, 10), (7, 3), (10, 10), (10, 0), (6, 25)):
        passes = -(-examples // size) if 0 < size < examples else 1
        rows = [torch.arange(examples)[minibatch_rows(examples, size, step)] for step in range(passes)]
        assert sorted(torch.cat(rows).tolist()) == list(range(examples))
        assert max(len(r) for r in rows) - min(len(r) for r in rows) <= 1  # balanced minibatches
        # the next pass starts over with the first minibatch
        assert torch.equal(torch.arange(examples)[minibatch_rows(examples, size, passes)], rows[0])


def _phi_by_hand(model, x, y, lr, steps, inner_batch):
    """Adam (beta1 = 0, beta2 = 0.999, bias-corrected, eps 1e-8) on strided minibatches, written out."""
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    nu = {n: torch.zeros_like(p) for n, p in phi.items()}
    passes = -(-len(x) // inner_batch)
    for t in range(steps):
        rows = slice(t % passes, None, passes)
        current = {n: p.clone().requires_grad_() for n, p in phi.items()}
        loss = F.mse_loss(torch.func.functional_call(model, current, (x[rows],)), y[rows])
        g = dict(zip(current, torch.autograd.grad(loss, tuple(current.values()))))
        for n in phi:
            nu[n] = 0.999 * nu[n] + 0.001 * g[n] ** 2
            phi[n] = phi[n] - lr * g[n] / (torch.sqrt(nu[n] / (1 - 0.999 ** (t + 1)) + 1e-16) + 1e-8)
    return phi


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_reptile_with_inner_adam_on_minibatches_moves_theta_to_the_mean_phi(execution):
    """The meta-gradient is theta - mean_i phi_i with phi_i from 5 Adam steps on minibatches of 4 of the
    task's 20 pooled points; one SGD step of rate eps is Algorithm 2: theta + eps (mean phi - theta)."""
    data, lr, steps, size, eps = batch(tasks=3, shots=10), 0.01, 5, 4, 0.5
    reptile = Reptile(mlp(), inner_lr=lr, inner_steps=steps, inner_optimizer="adam", inner_batch=size,
                      execution=execution)
    theta = {n: p.detach().clone() for n, p in reptile.model.named_parameters()}
    phis = []
    for i in range(len(data)):
        x = torch.cat([data.support_x[i], data.query_x[i]])
        y = torch.cat([data.support_y[i], data.query_y[i]])
        phis.append(_phi_by_hand(reptile.model, x, y, lr, steps, size))
    mean_phi = {n: torch.stack([phi[n] for phi in phis]).mean(0) for n in theta}
    got = grads(reptile, reptile.outer_loss(data))
    for n in theta:
        torch.testing.assert_close(got[f"model.{n}"], theta[n] - mean_phi[n], atol=1e-12, rtol=0)
    reptile.zero_grad(set_to_none=True)
    reptile.outer_loss(data).backward()
    torch.optim.SGD(reptile.parameters(), lr=eps).step()
    for n, p in reptile.model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[n] + eps * (mean_phi[n] - theta[n]), atol=1e-12, rtol=0)


def test_reptile_evaluates_with_its_inner_adam_rule():
    """task_losses / adapt use the same rule (full batch on the support set), e.g. 50 steps at meta-test."""
    data = batch(tasks=1, shots=5)
    reptile = Reptile(mlp(), inner_lr=0.01, inner_steps=5, inner_optimizer="adam", inner_batch=2)
    phi = _phi_by_hand(reptile.model, data.support_x[0], data.support_y[0], 0.01, 50, len(data.support_x[0]))
    adapted = reptile.adapt(data.support_x[0], data.support_y[0], inner_steps=50)
    for n in phi:
        torch.testing.assert_close(adapted[n], phi[n], atol=1e-12, rtol=0)
    assert reptile.rule.name == "adam"


def test_reptile_anneal_brings_the_outer_rate_linearly_to_zero():
    reptile = Reptile(mlp(), anneal=True)
    optimizer = torch.optim.SGD(reptile.parameters(), lr=1.0)
    scheduler = reptile.scheduler(optimizer, iterations=4)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert Reptile(mlp()).scheduler(optimizer, iterations=4) is None


def test_reptile_regime_options_reject_bad_values_in_one_line():
    with pytest.raises(ValueError, match="inner_optimizer='rmsprop'; use one of sgd, adam"):
        build("reptile", mlp(), inner_optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"inner_batch=-1; give an integer >= 0 \(0: the whole task\)"):
        Reptile(mlp(), inner_batch=-1)
    with pytest.raises(ValueError, match="give either rule=... or inner_optimizer=..., not both"):
        Reptile(mlp(), inner_optimizer="adam", rule=fm.core.rules.sgd(0.1))


def test_the_reptile_recipe_is_the_papers_omniglot_regime():
    from fastmaml.train import config as cfg

    config = cfg.resolve("omniglot-5w1s-reptile")
    assert (config.algorithm, config.inner_lr, config.inner_steps, config.eval_inner_steps) == ("reptile", 0.001, 5, 50)
    assert config.algorithm_options == {"inner_optimizer": "adam", "inner_batch": 10, "anneal": True}
    assert (config.optimizer, config.outer_lr, config.meta_batch_size) == ("sgd", 1.0, 5)
    assert config.data.shots + config.data.query_shots == 10  # --train-shots 10
