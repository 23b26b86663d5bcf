"""iMAML: the implicit meta-gradient against its closed form, and its large-lambda limit (MAML)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm
from algo_helpers import batch, grads, mlp
from fastmaml.algorithms import IMAML, build
from fastmaml.algorithms.imaml import ImplicitObjective, conjugate_gradient


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


@pytest.mark.filterwarnings("ignore:iMAML. I \\+ H/lam had negative curvature")
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


# -- the implicit gradient of a small nonlinear model against a dense solve (float64) ----------------


def _dense_system(model, data, lam, lr, steps, hessian=True):
    """phi by plain proximal gradient descent, H = the support-loss Hessian at phi (dense), g = grad L_query(phi).

    ``hessian=False``: (phi, None, unflat) instead."""
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    names, shapes = list(theta), [p.shape for p in theta.values()]

    def unflat(v):
        return dict(zip(names, (c.reshape(s) for c, s in zip(v.split([s.numel() for s in shapes]), shapes))))

    def loss(v, x, y):
        return F.mse_loss(torch.func.functional_call(model, unflat(v), (x,)), y)

    flat_theta = torch.cat([p.reshape(-1) for p in theta.values()])
    phi = flat_theta.clone()
    x, y = data.support_x[0], data.support_y[0]
    for _ in range(steps):
        phi = phi - lr * (torch.func.grad(loss)(phi, x, y) + lam * (phi - flat_theta))
    if not hessian:
        return phi, None, unflat
    return (*_hessian_and_query_grad(model, data, phi, unflat), unflat)


def _hessian_and_query_grad(model, data, phi, unflat):
    """The dense support-loss Hessian and the query gradient at the flat ``phi`` (first task)."""

    def loss(v, x, y):
        return F.mse_loss(torch.func.functional_call(model, unflat(v), (x,)), y)

    x, y = data.support_x[0], data.support_y[0]
    hessian = torch.autograd.functional.hessian(lambda v: loss(v, x, y), phi)
    return hessian, torch.func.grad(loss)(phi, data.query_x[0], data.query_y[0])


def _truncated_cg(a, b, steps):
    """Textbook CG on dense A, stopped before the first direction with p'Ap <= 0 (b if that is the first)."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for step in range(steps):
        ap = a @ p
        if p @ ap <= 0:
            return b.clone() if step == 0 else x
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + rr / rr_old * p
    return x


def _imaml_grad(imaml, data):
    return torch.cat([g.flatten() for g in grads(imaml, imaml.outer_loss(data)).values()])


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_implicit_gradient_equals_a_dense_solve_on_a_small_mlp(damping, recwarn):
    """Solved proximal problem (400 steps), positive definite I + H/lam: with as many CG steps as parameters
    the meta-gradient is ((1 + damping) I + H / lam)^-1 grad L_query(phi) by torch.linalg.solve."""
    data, lam, lr, steps = batch(tasks=1, shots=6), 4.0, 0.05, 400
    model = mlp((1, 3, 1))
    hessian, g, _ = _dense_system(model, data, lam, lr, steps)
    n = g.numel()
    a = torch.eye(n, dtype=torch.float64) * (1 + damping) + hessian / lam
    assert torch.linalg.eigvalsh(a)[0] > 0
    imaml = IMAML(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=n, damping=damping)
    torch.testing.assert_close(_imaml_grad(imaml, data), torch.linalg.solve(a, g), atol=1e-8, rtol=1e-8)
    assert not [w for w in recwarn if "negative curvature" in str(w.message)]


def test_an_indefinite_system_is_truncated_and_named_in_one_warning_line():
    """Small lam and an unsolved inner problem (1 step): I + H/lam is indefinite, the exact 'solve' is not a
    meta-gradient. The result is CG stopped at the first negative-curvature direction (an independent dense
    implementation), flagged with a one-line RuntimeWarning naming the knobs."""
    data, lam, lr, steps = batch(tasks=1, shots=6, seed=3), 0.05, 0.01, 1
    model = mlp((1, 6, 1))
    hessian, g, _ = _dense_system(model, data, lam, lr, steps)
    a = torch.eye(g.numel(), dtype=torch.float64) + hessian / lam
    assert torch.linalg.eigvalsh(a)[0] < 0  # the indefinite case
    imaml = IMAML(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=g.numel())
    with pytest.warns(RuntimeWarning, match=r"negative curvature on 1 of 1 tasks.*Raise lam, set "
                                            r"algorithm_options.damping") as record:
        got = _imaml_grad(imaml, data)
    assert "\n" not in str(record[0].message)
    torch.testing.assert_close(got, _truncated_cg(a, g, g.numel()), atol=1e-8, rtol=1e-8)
    assert (got - torch.linalg.solve(a, g)).norm() > 0.1 * got.norm()  # the untruncated solve would differ


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_the_authors_regime_pull_back_and_lam_damping_equal_a_dense_solve(execution, recwarn):
    """pull_back + lam_damping (aravindr93/imaml_dev): phi = plain GD on the support loss, then one step
    phi -= lr lam (phi - theta); meta-gradient ((1 + damping) I + H / (lam + lam_damping))^-1 grad L_query(phi),
    H at that phi. Checked against a hand loop and torch.linalg.solve in float64, on both execution paths;
    meta-test (adapt) runs the plain steps without the pull-back."""
    data, lam, lr, steps, damping, lam_damping = batch(tasks=1, shots=6), 2.0, 0.1, 7, 1.0, 10.0
    model = mlp((1, 3, 1))
    plain, _, unflat = _dense_system(model, data, 0.0, lr, steps, hessian=False)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    phi = plain - lr * lam * (plain - theta)
    hessian, g = _hessian_and_query_grad(model, data, phi, unflat)
    a = torch.eye(g.numel(), dtype=torch.float64) * (1 + damping) + hessian / (lam + lam_damping)
    imaml = IMAML(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=g.numel(), damping=damping,
                  lam_damping=lam_damping, pull_back=True, execution=execution)
    torch.testing.assert_close(_imaml_grad(imaml, data), torch.linalg.solve(a, g), atol=1e-8, rtol=1e-8)
    adapted = imaml.adapt(data.support_x[0], data.support_y[0])
    torch.testing.assert_close(torch.cat([adapted[n].reshape(-1) for n, _ in model.named_parameters()]), plain,
                               atol=1e-12, rtol=0)
    assert not [w for w in recwarn if "negative curvature" in str(w.message)]


def test_lam_damping_without_pull_back_keeps_the_proximal_inner_loop():
    """lam_damping alone changes only the CG matrix: same phi as the paper's proximal loop."""
    data, lam, lr, steps, lam_damping = batch(tasks=1, shots=6), 4.0, 0.05, 50, 10.0
    model = mlp((1, 3, 1))
    hessian, g, _ = _dense_system(model, data, lam, lr, steps)
    a = torch.eye(g.numel(), dtype=torch.float64) + hessian / (lam + lam_damping)
    imaml = IMAML(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=g.numel(), lam_damping=lam_damping)
    torch.testing.assert_close(_imaml_grad(imaml, data), torch.linalg.solve(a, g), atol=1e-8, rtol=1e-8)


def test_pull_back_and_lam_damping_reject_bad_values():
    with pytest.raises(ValueError, match=r"lam_damping=-10.0; it must be a number >= 0"):
        IMAML(mlp(), lam_damping=-10.0)
    with pytest.raises(ValueError, match="pull_back='yes'; give true or false"):
        IMAML(mlp(), pull_back="yes")


def test_pull_back_with_clipping_runs_clipped_plain_steps():
    """pull_back + max_grad_norm: phi <- phi - lr * clip(grad L(phi)), no proximal term in the steps."""
    data, lr, clip = batch(), 0.3, 0.05
    imaml = IMAML(mlp(), inner_lr=lr, inner_steps=3, lam=2.0, pull_back=True, max_grad_norm=clip)
    phi = {n: p.detach() for n, p in imaml.model.named_parameters()}
    for _ in range(3):
        current = {n: p.clone().requires_grad_() for n, p in phi.items()}
        loss = F.mse_loss(torch.func.functional_call(imaml.model, current, (data.support_x[0],)), data.support_y[0])
        g = dict(zip(current, torch.autograd.grad(loss, tuple(current.values()))))
        norm = torch.sqrt(sum((t ** 2).sum() for t in g.values()))
        assert norm > clip
        phi = {n: phi[n] - lr * g[n] * clip / norm for n in phi}
    adapted = imaml.adapt(data.support_x[0], data.support_y[0])
    for n in phi:
        torch.testing.assert_close(adapted[n], phi[n], atol=1e-12, rtol=0)


def test_a_diverging_imaml_run_names_its_knobs_in_one_line(tmp_path, capsys):
    """An inner loop that blows up (inner_lr 100) stops the run with the trainer's one-line error plus
    iMAML's own advice: clipping, fewer/smaller steps, an annealed outer rate."""
    from fastmaml.cli import main

    argv = ["train", "sinusoid", "algorithm=imaml", "inner_lr=100", "inner_steps=4", "iterations=3",
            "meta_batch_size=2", "compile=false", "baseline_iterations=0", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "became non-finite" in err
    assert "algorithm_options.max_grad_norm" in err and "lr_schedule=cosine" in err


def test_inner_gradient_clipping_bounds_each_proximal_step():
    """max_grad_norm: phi <- phi - lr * clip(grad L + lam (phi - theta)) with the global norm over all tensors."""
    data, lr, lam, clip = batch(), 0.1, 1.0, 0.05
    imaml = IMAML(mlp(), inner_lr=lr, inner_steps=3, lam=lam, max_grad_norm=clip)
    theta = {n: p.detach() for n, p in imaml.model.named_parameters()}
    phi = dict(theta)
    for _ in range(3):
        current = {n: p.clone().requires_grad_() for n, p in phi.items()}
        loss = F.mse_loss(torch.func.functional_call(imaml.model, current, (data.support_x[0],)), data.support_y[0])
        g = dict(zip(current, torch.autograd.grad(loss, tuple(current.values()))))
        full = {n: g[n] + lam * (phi[n] - theta[n]) for n in phi}
        norm = torch.sqrt(sum((t ** 2).sum() for t in full.values()))
        assert norm > clip  # the clip is active in this test
        phi = {n: phi[n] - lr * full[n] * clip / norm for n in phi}
    adapted = imaml.adapt(data.support_x[0], data.support_y[0])
    for n in phi:
        torch.testing.assert_close(adapted[n], phi[n], atol=1e-12, rtol=0)


def test_damping_and_clipping_reject_bad_values():
    with pytest.raises(ValueError, match=r"damping=-1.0; it must be a number >= 0 \(0: off\)"):
        IMAML(mlp(), damping=-1.0)
    with pytest.raises(ValueError, match="max_grad_norm='x'; it must be a number >= 0"):
        build("imaml", mlp(), max_grad_norm="x")


def test_the_negative_curvature_warning_names_the_matrix_cg_solved():
    """The damping options change the CG matrix; the warning names the one that was indefinite."""
    assert ImplicitObjective(lam=2.0, cg_steps=5).matrix == "I + H/lam"
    assert ImplicitObjective(lam=2.0, cg_steps=5, damping=1.0).matrix == "2 I + H/lam"
    assert ImplicitObjective(lam=2.0, cg_steps=5, damping=1.0, lam_damping=10.0).matrix == "2 I + H/12"
    with pytest.warns(RuntimeWarning, match=r"^iMAML: 2 I \+ H/12 had negative curvature on 1 of 3 tasks"):
        ImplicitObjective(lam=2.0, cg_steps=5, damping=1.0, lam_damping=10.0).finish(
            (torch.tensor([False, True, False]),))
