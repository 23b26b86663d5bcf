"""The meta-gradient against hand-derived values, an independent autograd loop, and finite differences."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fastmaml as fm
from helpers import assert_close_dicts, meta_gradient, reference_meta_gradient


def scalar_linear(w: float) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(w)
    return model


def one_point_batch(x_s, y_s, x_q, y_q):
    def t(v):
        return torch.tensor([[[v]]], dtype=torch.float64)  # (tasks=1, examples=1, 1)

    return fm.TaskBatch(t(x_s), t(y_s), t(x_q), t(y_q))


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_hand_derived_meta_gradient(execution):
    """f(x) = w x, L(w) = (w x - y)^2, one inner step with alpha = 0.1 at w = 1.

    Support (x_s, y_s) = (2, 1): dL_s/dw = 2 x_s (w x_s - y_s) = 4, so w' = 1 - 0.1 * 4 = 0.6.
    Query (x_q, y_q) = (1, 3): L_q(w') = (0.6 - 3)^2 = 5.76 and dL_q/dw' = 2 x_q (w' x_q - y_q) = -4.8.
    dw'/dw = 1 - 2 alpha x_s^2 = 0.2, so the second-order meta-gradient is -4.8 * 0.2 = -0.96;
    first-order drops dw'/dw and gives -4.8.
    """
    batch = one_point_batch(2.0, 1.0, 1.0, 3.0)
    for first_order, expected in ((False, -0.96), (True, -4.8)):
        maml = fm.MAML(scalar_linear(1.0), inner_lr=0.1, first_order=first_order, loss_fn=F.mse_loss,
                       execution=execution)
        loss = maml.outer_loss(batch)
        loss.backward()
        assert loss.item() == pytest.approx(5.76, abs=1e-12)
        assert maml.model.weight.grad.item() == pytest.approx(expected, abs=1e-12)


def sinusoid_batch(tasks=4, shots=5, seed=0):
    return fm.Sinusoid(shots=shots, dtype=torch.float64).sample_tasks(tasks, torch.Generator().manual_seed(seed))


def conv_batch(tasks=3, ways=3, shots=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * ways * shots, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 2)
    n = ways * shots
    return fm.TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_mlp_vmap_loop_and_reference_agree(steps, first_order):
    model = fm.models.MLP([1, 16, 16, 1]).double()
    batch = sinusoid_batch()
    expected = reference_meta_gradient(model, batch, 0.05, steps, first_order, F.mse_loss)
    for execution in ("vmap", "loop"):
        maml = fm.MAML(model, inner_lr=0.05, inner_steps=steps, first_order=first_order, execution=execution)
        assert_close_dicts(meta_gradient(maml, batch), expected)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("pool", ["stride", "max"])
def test_conv4_batchnorm_vmap_loop_and_reference_agree(steps, pool):
    """Catches vmapped native BatchNorm, whose second-order meta-gradient is ~1% off in torch 2.13."""
    model = fm.models.Conv4(in_channels=1, ways=3, filters=4, pool=pool, image_size=16).double()
    batch = conv_batch()
    expected = reference_meta_gradient(model, batch, 0.4, steps, False, F.cross_entropy)
    for execution in ("vmap", "loop"):
        maml = fm.MAML(model, inner_lr=0.4, inner_steps=steps, execution=execution)
        assert_close_dicts(meta_gradient(maml, batch), expected, rtol=1e-9, atol=1e-11)


def test_batchnorm_module_with_running_stats_is_not_mutated():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3)).double()
    model(torch.zeros(2, 1, 16, 16, dtype=torch.float64))
    before = {n: b.clone() for n, b in model.named_buffers()}
    maml = fm.MAML(model, inner_lr=0.1, execution="vmap")
    maml.outer_loss(conv_batch()).backward()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_second_order_matches_central_finite_difference():
    model = fm.models.MLP([1, 8, 8, 1], activation=nn.Tanh).double()
    batch = sinusoid_batch(tasks=3)
    maml = fm.MAML(model, inner_lr=0.1, inner_steps=2)
    grads = meta_gradient(maml, batch)
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    eps = 1e-6

    def loss_at(sign):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(sign * eps * direction[n])
        value = maml.outer_loss(batch).item()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.sub_(sign * eps * direction[n])
        return value

    numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
    analytic = sum((grads[n] * direction[n]).sum() for n in grads).item()
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_inner_step_passes_gradcheck_and_gradgradcheck():
    model = fm.models.MLP([1, 3, 1], activation=nn.Tanh).double()
    batch = sinusoid_batch(tasks=2, shots=3)
    names = [n for n, _ in model.named_parameters()]
    maml = fm.MAML(model, inner_lr=0.1, inner_steps=2)

    def outer(*tensors):
        state = (dict(zip(names, tensors)), {}, {})
        return maml.task_losses(batch, state=state)[0].mean()

    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(outer, inputs)
    assert torch.autograd.gradgradcheck(outer, inputs)


def test_first_order_drops_the_inner_jacobian():
    """FOMAML's meta-gradient is the query gradient at the adapted parameters; dtheta'/dtheta is identity."""
    model = fm.models.MLP([1, 8, 1]).double()
    batch = sinusoid_batch(tasks=1)
    maml = fm.MAML(model, inner_lr=0.1, first_order=True)
    adapted = maml.adapt(batch.support_x[0], batch.support_y[0])
    for name, p in model.named_parameters():
        jacobian_row = torch.autograd.grad(adapted[name].sum(), p, retain_graph=True)[0]
        assert torch.equal(jacobian_row, torch.ones_like(p))
    at = {n: p.detach().requires_grad_() for n, p in adapted.items()}
    query_loss = F.mse_loss(maml.predict(at, batch.query_x[0]), batch.query_y[0])
    expected = dict(zip(at, torch.autograd.grad(query_loss, list(at.values()))))
    assert_close_dicts(meta_gradient(maml, batch), expected)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_unselected_parameters_stay_fixed_yet_get_outer_gradients(execution):
    model = fm.models.MLP([1, 8, 8, 1]).double()
    batch = sinusoid_batch()
    maml = fm.MAML(model, inner_lr=0.1, inner_steps=2, adapt=["4"], execution=execution)  # the last Linear
    adapted = maml.adapt(batch.support_x[0], batch.support_y[0])
    for name, p in model.named_parameters():
        assert torch.equal(adapted[name], p) == (not name.startswith("4."))
    grads = meta_gradient(maml, batch)
    assert all(g.abs().sum() > 0 for g in grads.values())
    expected = reference_meta_gradient(model, batch, 0.1, 2, False, F.mse_loss, adapt_names=["4.weight", "4.bias"])
    assert_close_dicts(grads, expected)


def test_predicate_selector_and_unknown_name():
    model = fm.models.MLP([1, 4, 1])
    maml = fm.MAML(model, adapt=lambda name, p: name.endswith("bias"))
    assert maml.adapt_names == ("0.bias", "2.bias")
    with pytest.raises(ValueError, match="matches no parameter"):
        fm.MAML(model, adapt="head")


def test_auto_falls_back_to_loop_once_with_a_warning():
    class Unvmappable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def forward(self, x):
            return self.lin(x) * float(x.sum() > -1e9)  # data-dependent Python control flow

    model = Unvmappable().double()
    maml = fm.MAML(model, inner_lr=0.1)
    assert maml.mapper.execution == "auto"
    batch = sinusoid_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning is recorded, not swallowed by the once-per-place filter
        grads = [meta_gradient(maml, batch) for _ in range(3)]
    fallbacks = [str(w.message) for w in caught if "vmap cannot run" in str(w.message)]
    assert len(fallbacks) == 1, fallbacks  # once across the three calls, not once per call
    assert "vmap cannot run Unvmappable" in fallbacks[0] and "execution='loop'" in fallbacks[0]
    assert maml.mapper.execution == "loop"
    # every call's meta-gradient, the first (vmap failed, then the loop ran) included, is the loop's
    expected = meta_gradient(fm.MAML(model, inner_lr=0.1, execution="loop"), batch)
    for got in grads:
        assert_close_dicts(got, expected)


# -- inner rules with per-task state: momentum and Adam --------------------------------------------


def _reference_with_rule(model, batch, steps, first_order, rule_step):
    """Second- (or first-) order meta-gradient with a stateful inner rule, by a plain autograd loop;
    ``rule_step(params, grads, state, t) -> (params, state)`` works on lists of tensors."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    total = 0.0
    for i in range(len(batch)):
        fast, state = list(params), None
        for t in range(steps):
            loss = F.mse_loss(functional_call(model, dict(zip(names, fast)), (batch.support_x[i],)), batch.support_y[i])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast, state = rule_step(fast, list(grads), state, t)
        query = functional_call(model, dict(zip(names, fast)), (batch.query_x[i],))
        total = total + F.mse_loss(query, batch.query_y[i])
    return dict(zip(names, torch.autograd.grad(total / len(batch), params)))


def _momentum_step(lr, beta):
    def step(params, grads, velocity, t):
        velocity = grads if velocity is None else [beta * v + g for v, g in zip(velocity, grads)]
        return [p - lr * v for p, v in zip(params, velocity)], velocity
    return step


def _adam_step(lr, b1, b2, eps, eps_root):
    def step(params, grads, state, t):
        mu, nu = state if state is not None else ([0.0] * len(grads), [0.0] * len(grads))
        mu = [b1 * m + (1 - b1) * g for m, g in zip(mu, grads)]
        nu = [b2 * v + (1 - b2) * g * g for v, g in zip(nu, grads)]
        new = [p - lr * (m / (1 - b1 ** (t + 1))) / (torch.sqrt(v / (1 - b2 ** (t + 1)) + eps_root) + eps)
               for p, m, v in zip(params, mu, nu)]
        return new, (mu, nu)
    return step


@pytest.mark.parametrize("execution", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("which", ["momentum", "adam"])
def test_stateful_inner_rules_match_a_plain_autograd_loop(which, first_order, execution):
    torch.manual_seed(0)
    model = fm.models.MLP([1, 8, 8, 1], activation=nn.Tanh).double()
    batch = fm.Sinusoid(dtype=torch.float64).sample_tasks(3, torch.Generator().manual_seed(0))
    if which == "momentum":
        rule, reference = fm.core.momentum(0.05, beta=0.8), _momentum_step(0.05, 0.8)
    else:
        rule, reference = fm.core.adam(0.01, betas=(0.8, 0.9)), _adam_step(0.01, 0.8, 0.9, 1e-8, 1e-16)
    maml = fm.MAML(model, 0.05, 3, first_order, F.mse_loss, rule=rule, execution=execution)
    expected = _reference_with_rule(model, batch, 3, first_order, reference)
    assert_close_dicts(meta_gradient(maml, batch), expected)
    # The state really changes the update: plain SGD gives a different meta-gradient.
    sgd = meta_gradient(fm.MAML(model, 0.05, 3, first_order, F.mse_loss, execution=execution), batch)
    assert (sgd["0.weight"] - expected["0.weight"]).abs().max() > 1e-6


def test_momentum_rule_is_sgd_at_beta_zero_and_nesterov_looks_ahead():
    params, grads = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, -1.0])}
    rule = fm.core.momentum(0.1, beta=0.0)
    new, state = rule.update(grads, rule.init(params), params, {}, 0)
    torch.testing.assert_close(new["w"], params["w"] - 0.1 * grads["w"])
    nesterov = fm.core.momentum(0.1, beta=0.5, nesterov=True)
    state = nesterov.init(params)
    _, state = nesterov.update(grads, state, params, {}, 0)
    new, _ = nesterov.update(grads, state, params, {}, 1)
    velocity = 0.5 * grads["w"] + grads["w"]
    torch.testing.assert_close(new["w"], params["w"] - 0.1 * (grads["w"] + 0.5 * velocity))
    torch.testing.assert_close(rule.step(params, grads)["w"], params["w"] - 0.1 * grads["w"])
    with pytest.raises(ValueError, match="beta=1.0; the momentum coefficient must be in"):
        fm.core.momentum(0.1, beta=1.0)
    with pytest.raises(ValueError, match="both Adam coefficients must be in"):
        fm.core.adam(0.1, betas=(0.9, 1.0))
