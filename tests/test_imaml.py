"""iMAML: the implicit meta-gradient against its closed form, and its large-lambda limit (MAML)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm
from algo_helpers import batch, grads, mlp
from fastmaml.algorithms import IMAML, build
from fastmaml.algorithms.imaml import conjugate_gradient


def test_conjugate_gradient_solves_an_spd_system_and_survives_a_zero_rhs():
    torch.manual_seed(0)
    m = torch.randn(4, 4, dtype=torch.float64)
    a = m @ m.T + torch.eye(4, dtype=torch.float64)
    b = {"x": torch.randn(4, dtype=torch.float64)}
    x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=4).x
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b["x"]), atol=1e-10, rtol=0)
    zero = conjugate_gradient(
        lambda v: {"x": a @ v["x"]}, {"x": torch.zeros(4, dtype=torch.float64)}, steps=3
    )
    assert torch.equal(zero.x["x"], torch.zeros(4, dtype=torch.float64))
    assert not bool(zero.negative_curvature) and not bool(x_negative(a, b))


def x_negative(a, b):
    return conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=4).negative_curvature


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_imaml_matches_the_exact_implicit_gradient_of_a_quadratic_inner_problem(execution):
    """L_support(phi) = mean((X phi - y)^2) = 1/2 phi^T A phi - c^T phi + const (A = 2/n X^T X,
    c = 2/n X^T y). The proximal solution is phi*(theta) = (A + lam I)^-1 (c + lam theta); the meta-gradient
    is d L_query(phi*(theta)) / d theta, here by autograd through that solve (no CG, no inner loop)."""
    torch.manual_seed(0)
    tasks, d, lam = 3, 3, 2.0
    data = fm.TaskBatch(
        torch.randn(tasks, 5, d, dtype=torch.float64),
        torch.randn(tasks, 5, 1, dtype=torch.float64),
        torch.randn(tasks, 4, d, dtype=torch.float64),
        torch.randn(tasks, 4, 1, dtype=torch.float64),
    )
    model = nn.Linear(d, 1, bias=False).double()
    # Gradient descent on the proximal problem contracts by max|1 - lr (eig + lam)| < 0.9 per step.
    imaml = IMAML(model, inner_lr=0.05, inner_steps=400, lam=lam, cg_steps=d, execution=execution)
    loss = imaml.outer_loss(data)
    loss.backward()

    theta = model.weight.detach().reshape(d, 1).clone().requires_grad_()
    total = 0.0
    for i in range(tasks):
        x, y = data.support_x[i], data.support_y[i]
        a, c = 2 / len(x) * x.T @ x, 2 / len(x) * x.T @ y
        phi = torch.linalg.solve(a + lam * torch.eye(d, dtype=torch.float64), c + lam * theta)
        total = total + F.mse_loss(data.query_x[i] @ phi, data.query_y[i])
    total = total / tasks
    (want,) = torch.autograd.grad(total, theta)
    torch.testing.assert_close(model.weight.grad, want.reshape(1, d), atol=1e-10, rtol=0)
    torch.testing.assert_close(loss, total.detach(), atol=1e-12, rtol=0)


def test_imaml_approaches_maml_as_lambda_grows():
    """With lam large, phi* = theta - grad L_s(theta) / lam + O(1/lam^2) and (I + H/lam)^-1 = I - H/lam + ...,
    so iMAML's meta-gradient equals one-step MAML's with inner_lr = 1/lam up to O(1/lam^2), while
    both differ from the plain query gradient by O(1/lam)."""
    data = batch(tasks=2, shots=6)
    errors, offsets = [], []
    for lam in (20.0, 200.0):
        imaml = IMAML(mlp((1, 4, 1)), inner_lr=0.5 / lam, inner_steps=80, lam=lam, cg_steps=13)
        maml = fm.MAML(mlp((1, 4, 1)), inner_lr=1 / lam, inner_steps=1)
        plain = fm.MAML(mlp((1, 4, 1)), inner_steps=0)
        g_imaml = torch.cat([g.flatten() for g in grads(imaml, imaml.outer_loss(data)).values()])
        g_maml = torch.cat([g.flatten() for g in grads(maml, maml.outer_loss(data)).values()])
        g_plain = torch.cat([g.flatten() for g in grads(plain, plain.outer_loss(data)).values()])
        errors.append((g_imaml - g_maml).norm().item())
        offsets.append((g_maml - g_plain).norm().item())
    assert errors[1] < errors[0] / 50  # O(1/lam^2): a tenfold lam gives ~a hundredfold smaller error
    assert offsets[1] > offsets[0] / 20  # O(1/lam) only: the agreement is not the trivial one
    assert errors[1] < 0.05 * offsets[1]


def test_imaml_memory_does_not_grow_with_inner_steps():
    """No graph through the inner loop: the outer loss's graph is the same size for 1 and 20 steps."""
    sizes = []
    for steps in (1, 20):
        loss = IMAML(mlp(), inner_lr=0.01, inner_steps=steps).outer_loss(batch())
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is not None and node not in seen:
                seen.add(node)
                stack.extend(fn for fn, _ in node.next_functions)
        sizes.append(len(seen))
    assert sizes[0] == sizes[1] < 40


def test_imaml_adapt_runs_proximal_gradient_descent():
    """adapt and task_losses run phi <- phi - lr (grad L_s(phi) + lam (phi - theta)), the proximal problem."""
    data, lr, lam, steps = batch(), 0.05, 3.0, 4
    imaml = IMAML(mlp(), inner_lr=lr, inner_steps=steps, lam=lam)
    theta = {n: p.detach() for n, p in imaml.model.named_parameters()}
    phi = dict(theta)
    for _ in range(steps):
        current = {n: p.clone().requires_grad_() for n, p in phi.items()}
        loss = F.mse_loss(
            torch.func.functional_call(imaml.model, current, (data.support_x[0],)), data.support_y[0]
        )
        g = torch.autograd.grad(loss, tuple(current.values()))
        phi = {n: p - lr * (gn + lam * (p - theta[n])) for (n, p), gn in zip(phi.items(), g)}
    adapted = imaml.adapt(data.support_x[0], data.support_y[0])
    for name in phi:
        torch.testing.assert_close(adapted[name], phi[name], atol=1e-12, rtol=0)
    losses, _ = imaml.task_losses(data[0])
    want = F.mse_loss(torch.func.functional_call(imaml.model, phi, (data.query_x[0],)), data.query_y[0])
    torch.testing.assert_close(losses[0], want, atol=1e-12, rtol=0)


def test_imaml_rejects_bad_lambda_and_cg_steps():
    for lam in (0.0, -1.0):
        with pytest.raises(
            ValueError, match=f"lam={lam}; iMAML's proximal strength lambda must be a number > 0"
        ):
            IMAML(mlp(), lam=lam)
    with pytest.raises(ValueError, match="cg_steps=0; conjugate gradient needs an integer >= 1"):
        build("imaml", mlp(), cg_steps=0)
    with pytest.raises(ValueError, match="cg_steps=2.5"):
        IMAML(mlp(), cg_steps=2.5)


def test_conjugate_gradient_truncates_at_negative_curvature():
    """A = diag(2, -1), b = (1, 1): the first step (p'Ap = 1) gives x = (2, 2); the second direction
    p = (6, 12) has p'Ap = -72, where CG would head off to a saddle: the solve stops at (2, 2)."""
    a = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    x, negative = conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": torch.ones(2, dtype=torch.float64)}, steps=10)
    assert bool(negative)
    assert torch.equal(x["x"], torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_conjugate_gradient_falls_back_to_b_when_the_first_direction_has_negative_curvature():
    """b'Ab = -1 < 0 at once: no positive-curvature iterate exists; the result is b (flagged), not 0."""
    a = torch.tensor([[-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b = {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    x, negative = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=3)
    assert bool(negative) and torch.equal(x["x"], b["x"])
