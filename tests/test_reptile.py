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


def _adam_by_hand(model, x, y, lr, steps, inner_batch, nu=None, count=0):
    """Adam (beta1 = 0, beta2 = 0.999, bias-corrected, eps 1e-8) on strided minibatches, written out,
    from second moments ``nu`` built by ``count`` earlier steps (zeros, 0: a fresh Adam); (phi, nu)."""
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    nu = {n: torch.zeros_like(p) for n, p in phi.items()} if nu is None else dict(nu)
    passes = -(-len(x) // inner_batch)
    for t in range(steps):
        rows = slice(t % passes, None, passes)
        current = {n: p.clone().requires_grad_() for n, p in phi.items()}
        loss = F.mse_loss(torch.func.functional_call(model, current, (x[rows],)), y[rows])
        g = dict(zip(current, torch.autograd.grad(loss, tuple(current.values()))))
        for n in phi:
            nu[n] = 0.999 * nu[n] + 0.001 * g[n] ** 2
            phi[n] = phi[n] - lr * g[n] / (torch.sqrt(nu[n] / (1 - 0.999 ** (count + t + 1)) + 1e-16) + 1e-8)
    return phi, nu


def _phi_by_hand(model, x, y, lr, steps, inner_batch):
    return _adam_by_hand(model, x, y, lr, steps, inner_batch)[0]


def _pooled(data, i):
    return torch.cat([data.support_x[i], data.query_x[i]]), torch.cat([data.support_y[i], data.query_y[i]])


def _carried(reptile):
    nu, count = reptile.moments.moments()
    return {n: t.clone() for n, t in nu.items()}, int(count)


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
    assert config.algorithm_options == {"inner_optimizer": "adam", "carry_moments": True, "inner_batch": 10,
                                        "anneal": True}
    assert (config.optimizer, config.outer_lr, config.meta_batch_size) == ("sgd", 1.0, 5)
    assert config.data.shots + config.data.query_shots == 10  # --train-shots 10


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_carried_moments_run_on_across_tasks_as_the_papers_sequential_adam(execution):
    """carry_moments with one task per meta-batch is supervised-reptile's training exactly: each task's
    Adam starts from the second moments and step count the previous tasks left, and so does meta-test."""
    lr, steps, size, eps = 0.01, 5, 4, 0.5
    reptile = Reptile(mlp(), inner_lr=lr, inner_steps=steps, inner_optimizer="adam", inner_batch=size,
                      carry_moments=True, execution=execution)
    optimizer = torch.optim.SGD(reptile.parameters(), lr=eps)
    nu, count = None, 0
    for seed in range(3):
        data = batch(tasks=1, shots=10, seed=seed)
        theta = {n: p.detach().clone() for n, p in reptile.model.named_parameters()}
        phi, nu = _adam_by_hand(reptile.model, *_pooled(data, 0), lr, steps, size, nu, count)
        count += steps
        got = grads(reptile, reptile.outer_loss(data))
        for n in theta:
            torch.testing.assert_close(got[f"model.{n}"], theta[n] - phi[n], atol=1e-12, rtol=0)
        carried, carried_count = _carried(reptile)
        assert carried_count == count
        for n in nu:
            torch.testing.assert_close(carried[n], nu[n], atol=1e-15, rtol=1e-12)
        optimizer.step()
    test = batch(tasks=1, shots=5, seed=9)  # meta-test: 20 full-batch steps from the carried moments
    phi, _ = _adam_by_hand(reptile.model, test.support_x[0], test.support_y[0], lr, 20, 5, nu, count)
    adapted = reptile.adapt(test.support_x[0], test.support_y[0], inner_steps=20)
    losses, _ = reptile.task_losses(test, inner_steps=20)
    for n in phi:
        torch.testing.assert_close(adapted[n], phi[n], atol=1e-12, rtol=0)
    expected = F.mse_loss(torch.func.functional_call(reptile.model, phi, (test.query_x[0],)), test.query_y[0])
    torch.testing.assert_close(losses[0], expected, atol=1e-12, rtol=0)
    after, after_count = _carried(reptile)
    assert after_count == count and all(torch.equal(after[n], carried[n]) for n in nu)  # evaluation never moves them


def test_a_meta_batch_advances_the_moments_by_its_tasks_mean_increment():
    """Tasks of one meta-batch adapt side by side from the same moments; the moments then advance as if
    the tasks had run one after another, each adding the batch's mean increment."""
    lr, steps, size = 0.01, 5, 4
    reptile = Reptile(mlp(), inner_lr=lr, inner_steps=steps, inner_optimizer="adam", inner_batch=size,
                      carry_moments=True)
    reptile.outer_loss(batch(tasks=2, shots=10, seed=1))
    nu0, count0 = _carried(reptile)
    assert count0 == 2 * steps and all(v.abs().sum() > 0 for v in nu0.values())
    data = batch(tasks=3, shots=10, seed=2)
    finals = [_adam_by_hand(reptile.model, *_pooled(data, i), lr, steps, size, nu0, count0)[1] for i in range(3)]
    reptile.outer_loss(data)
    nu, count = _carried(reptile)
    decay = 0.999 ** steps
    for n in nu0:
        increment = torch.stack([f[n] - decay * nu0[n] for f in finals]).mean(0)
        expected = nu0[n]
        for _ in range(3):  # one task after another
            expected = decay * expected + increment
        torch.testing.assert_close(nu[n], expected, atol=1e-15, rtol=1e-12)
    assert count == count0 + 3 * steps


def test_shards_of_a_meta_batch_advance_the_moments_as_one_process_does():
    """2 ranks (3 + 2 tasks), each advancing by its shard, combined as Context.allreduce_buffers combines
    them (old + sum_r tasks_r / tasks (new_r - old)): the moments one process gets for the 5 tasks."""
    import copy

    from fastmaml.train import distributed

    reptile = Reptile(mlp(), inner_lr=0.01, inner_steps=5, inner_optimizer="adam", inner_batch=4, carry_moments=True)
    reptile.outer_loss(batch(tasks=2, shots=10, seed=1))
    before = {n: b.clone() for n, b in reptile.moments.named_buffers()}
    data = batch(tasks=5, shots=10, seed=2)
    ranks = [copy.deepcopy(reptile) for _ in range(2)]
    shards = [distributed.Context(rank, 2).shard(data) for rank in range(2)]
    for rank, shard in zip(ranks, shards):
        rank.outer_loss(shard)
    reptile.outer_loss(data)
    for name, one in reptile.moments.named_buffers():
        moved = sum(len(shard) / len(data) * (dict(r.moments.named_buffers())[name] - before[name])
                    for r, shard in zip(ranks, shards))
        torch.testing.assert_close(before[name] + moved, one, atol=1e-15, rtol=1e-12, msg=name)


def test_carried_moments_are_saved_with_the_algorithm_and_need_adam():
    reptile = Reptile(mlp(), inner_lr=0.01, inner_optimizer="adam", inner_batch=4, carry_moments=True)
    reptile.outer_loss(batch(tasks=2, shots=10))
    state = reptile.state_dict()
    assert state["moments.count"] == 10 and any(k.startswith("moments.") and k != "moments.count" for k in state)
    fresh = Reptile(mlp(), inner_lr=0.01, inner_optimizer="adam", inner_batch=4, carry_moments=True)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.moments.buffers(), reptile.moments.buffers()))
    with pytest.raises(ValueError, match="carry_moments=True carries Adam's moments; set inner_optimizer='adam' too"):
        Reptile(mlp(), carry_moments=True)
