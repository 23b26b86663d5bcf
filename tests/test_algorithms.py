"""The algorithm registry, FOMAML, ANIL, Meta-SGD and Reptile, each against an independent computation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fastmaml as fm
from algo_helpers import assert_close, batch, bn_mlp, grads, mlp
from fastmaml.algorithms import ALGORITHMS, ANIL, FOMAML, MetaSGD, Reptile, build, options

NAMES = ("maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "imaml")


# -- the registry --------------------------------------------------------------------------------------


def test_registry_names_are_the_promised_ones():
    assert tuple(ALGORITHMS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_trains_with_any_optimizer(name):
    algo = build(name, mlp(), inner_lr=0.05, inner_steps=2)
    assert isinstance(algo, nn.Module) and algo.inner_steps == 2 and isinstance(algo.first_order, bool)
    data = batch()
    before = {n: p.detach().clone() for n, p in algo.model.named_parameters()}
    optimizer = torch.optim.SGD(algo.parameters(), lr=0.1)
    algo.begin_iteration(0, 10)
    loss = algo.outer_loss(data)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in algo.model.named_parameters())
    losses, predictions = algo.task_losses(data, inner_steps=3, track=True)
    assert losses.shape == (3, 4) and predictions.shape == (3, 4, *data.query_y.shape[1:])
    params = algo.adapt(data.support_x[0], data.support_y[0])
    assert algo.predict(params, data.query_x[0]).shape == data.query_y[0].shape


def test_build_rejects_unknown_names_and_foreign_options():
    with pytest.raises(ValueError, match="unknown algorithm 'mamal'; choose one of maml, fomaml"):
        build("mamal", mlp())
    with pytest.raises(ValueError, match="option 'lam' belongs to imaml, not maml; maml takes inner_lr"):
        build("maml", mlp(), lam=1.0)
    with pytest.raises(ValueError, match="option 'head' belongs to anil, not reptile"):
        build("reptile", mlp(), head="4")
    with pytest.raises(ValueError, match="option 'colour' is not an option of anil; anil takes .*head"):
        build("anil", mlp(), colour="red")


def test_build_takes_the_trainers_common_options_for_every_algorithm():
    """None means the algorithm's default; fomaml, reptile and imaml are first-order and refuse first_order=False."""
    for name in NAMES:
        algo = build(name, mlp(), inner_lr=0.1, inner_steps=2, execution="loop", first_order=None, head=None)
        assert algo.inner_steps == 2
        if name != "mamlpp":  # MAML++ starts first-order by its derivative-order annealing
            assert algo.first_order is (name in ("fomaml", "reptile", "imaml"))
        if name in ("fomaml", "reptile", "imaml"):
            assert build(name, mlp(), first_order=True).first_order
            with pytest.raises(ValueError, match="first-order by definition"):
                build(name, mlp(), first_order=False)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_and_loop_paths_agree(name):
    options = {"multi_step_loss_fraction": 1.0, "first_order_fraction": 0.0} if name == "mamlpp" else {}
    data = batch()
    results = []
    for execution in ("vmap", "loop"):
        algo = build(
            name,
            bn_mlp(track=name == "mamlpp") if name in ("maml", "mamlpp") else mlp(),
            inner_lr=0.1,
            inner_steps=2,
            execution=execution,
            **options,
        )
        results.append((grads(algo, algo.outer_loss(data)), {n: b.clone() for n, b in algo.named_buffers()}))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])
    assert any(g.abs().sum() > 0 for g in results[0][0].values())


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_runs_batchnorm_with_running_stats_and_never_writes_them(name):
    model = bn_mlp(track=True)
    before = {n: b.clone() for n, b in model.named_buffers()}
    algo = build(name, model, inner_lr=0.1, inner_steps=2)
    algo.outer_loss(batch()).backward()
    for mode in (True, False):
        algo.train(mode)
        algo.task_losses(batch(seed=1), track=True)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


# -- FOMAML --------------------------------------------------------------------------------------------


def test_fomaml_is_first_order_maml():
    data = batch()
    fomaml = FOMAML(mlp(), inner_lr=0.1, inner_steps=2)
    maml_fo = fm.MAML(mlp(), inner_lr=0.1, inner_steps=2, first_order=True)
    maml_so = fm.MAML(mlp(), inner_lr=0.1, inner_steps=2)
    g = grads(fomaml, fomaml.outer_loss(data))
    assert fomaml.first_order
    assert_close(g, grads(maml_fo, maml_fo.outer_loss(data)))
    second = grads(maml_so, maml_so.outer_loss(data))
    assert (g["model.0.weight"] - second["model.0.weight"]).abs().max() > 1e-6


# -- ANIL ----------------------------------------------------------------------------------------------


def test_anil_head_defaults_to_last_linear_and_accepts_a_prefix():
    assert ANIL(mlp()).adapt_names == ("4.weight", "4.bias")
    assert ANIL(fm.models.Conv4(ways=5)).adapt_names == ("head.weight", "head.bias")
    assert ANIL(mlp(), head="2").adapt_names == ("2.weight", "2.bias")
    with pytest.raises(ValueError, match="has no nn.Linear to use as ANIL's head; pass head="):
        ANIL(nn.Sequential(nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValueError, match="matches no parameter"):
        ANIL(mlp(), head="classifier")


def test_anil_adapts_only_the_head_but_meta_learns_the_body():
    """Body untouched by the inner loop; its meta-gradient equals a hand-written head-only MAML."""
    data, lr, model = batch(), 0.2, mlp()
    anil = ANIL(model, inner_lr=lr, inner_steps=1)
    adapted = anil.adapt(data.support_x[0], data.support_y[0])
    for name, p in model.named_parameters():
        assert torch.equal(adapted[name], p) is (not name.startswith("4."))
    got = grads(anil, anil.outer_loss(data))

    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    body = nn.Sequential(*(model[j] for j in range(4)))  # MLP's own slicing re-runs its constructor
    total = 0.0
    for i in range(len(data)):
        values = dict(zip(names, params))
        features = functional_call(
            body, {n: v for n, v in values.items() if not n.startswith("4.")}, (data.support_x[i],)
        )
        w, b = values["4.weight"], values["4.bias"]
        gw, gb = torch.autograd.grad(F.mse_loss(F.linear(features, w, b), data.support_y[i]), (w, b), create_graph=True)
        query_features = functional_call(
            body, {n: v for n, v in values.items() if not n.startswith("4.")}, (data.query_x[i],)
        )
        total = total + F.mse_loss(F.linear(query_features, w - lr * gw, b - lr * gb), data.query_y[i])
    want = dict(zip(names, torch.autograd.grad(total / len(data), params)))
    assert_close({n: got["model." + n] for n in names}, want)
    assert got["model.0.weight"].abs().sum() > 0  # the body is meta-learned


# -- Meta-SGD ------------------------------------------------------------------------------------------


def test_metasgd_with_rates_at_alpha_equals_maml_and_rates_get_the_analytic_gradient():
    """One step: theta' = theta - r * g, so dL_query/dr = -g(theta) * grad L_query(theta') elementwise."""
    data, lr = batch(), 0.1
    metasgd, maml = MetaSGD(mlp(), inner_lr=lr), fm.MAML(mlp(), inner_lr=lr)
    got = grads(metasgd, metasgd.outer_loss(data))
    want = grads(maml, maml.outer_loss(data))
    assert_close({n: g for n, g in got.items() if n.startswith("model.")}, want)

    model = metasgd.model
    rate_grad = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(data)):
        params = dict(model.named_parameters())
        support = torch.autograd.grad(
            F.mse_loss(functional_call(model, params, (data.support_x[i],)), data.support_y[i]),
            tuple(params.values()),
        )
        fast = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(params.items(), support)}
        query = torch.autograd.grad(
            F.mse_loss(functional_call(model, fast, (data.query_x[i],)), data.query_y[i]),
            tuple(fast.values()),
        )
        for (n, _), gs, gq in zip(params.items(), support, query):
            rate_grad[n] += -gs * gq / len(data)
    assert_close({n: got["rule_state." + n.replace(".", "/")] for n in rate_grad}, rate_grad)


# -- Reptile -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_query", [True, False])
def test_reptile_update_matches_the_closed_form_on_a_quadratic(use_query):
    """Linear least squares: L(w) = mean((X w - y)^2), so gradient descent is affine in w:
    w_{t+1} = (I - lr A) w_t + lr c with A = 2/n X^T X, c = 2/n X^T y, and after k steps
    phi = M^k w + sum_{j<k} M^j lr c with M = I - lr A. The outer gradient is w - mean_i phi_i."""
    torch.manual_seed(0)
    tasks, k, lr = 3, 4, 0.05
    data = fm.TaskBatch(
        torch.randn(tasks, 5, 3, dtype=torch.float64),
        torch.randn(tasks, 5, 1, dtype=torch.float64),
        torch.randn(tasks, 4, 3, dtype=torch.float64),
        torch.randn(tasks, 4, 1, dtype=torch.float64),
    )
    model = nn.Linear(3, 1, bias=False).double()
    reptile = Reptile(model, inner_lr=lr, inner_steps=k, use_query=use_query)
    w = model.weight.detach().reshape(3, 1)
    phis, query_losses = [], []
    for i in range(tasks):
        x, y = data.support_x[i], data.support_y[i]
        if use_query:
            x, y = torch.cat([x, data.query_x[i]]), torch.cat([y, data.query_y[i]])
        a, c = 2 / len(x) * x.T @ x, 2 / len(x) * x.T @ y
        m = torch.eye(3, dtype=torch.float64) - lr * a
        phi = torch.linalg.matrix_power(m, k) @ w + sum(torch.linalg.matrix_power(m, j) @ (lr * c) for j in range(k))
        phis.append(phi)
        query_losses.append(F.mse_loss(data.query_x[i] @ phi, data.query_y[i]))
    loss = reptile.outer_loss(data)
    loss.backward()
    torch.testing.assert_close(model.weight.grad, (w - torch.stack(phis).mean(0)).reshape(1, 3), atol=1e-13, rtol=0)
    torch.testing.assert_close(loss, torch.stack(query_losses).mean())
    before = model.weight.detach().clone()
    torch.optim.SGD(reptile.parameters(), lr=0.5).step()  # theta + eps (mean phi - theta), Algorithm 2
    torch.testing.assert_close(model.weight.detach(), before + 0.5 * (torch.stack(phis).mean(0).reshape(1, 3) - before))


def test_reptile_builds_no_graph_through_the_inner_loop():
    reptile = Reptile(mlp(), inner_lr=0.1, inner_steps=3)
    loss = reptile.outer_loss(batch())
    # The graph is the surrogate alone: one multiply/sum per parameter, whatever the number of steps.
    assert _graph_size(loss) == _graph_size(Reptile(mlp(), inner_lr=0.1, inner_steps=1).outer_loss(batch())) < 40


def _graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


# -- bad input -----------------------------------------------------------------------------------------


def test_algorithms_reject_bad_input_with_one_line_errors():
    with pytest.raises(TypeError, match="expected a fastmaml.TaskBatch"):
        Reptile(mlp()).outer_loss((1, 2, 3, 4))
    with pytest.raises(ValueError, match="inner_steps=-1"):
        Reptile(mlp()).outer_loss(batch(), inner_steps=-1)
    with pytest.raises(ValueError, match="inner_lr=-0.1"):
        build("metasgd", mlp(), inner_lr=-0.1)
    with pytest.raises(TypeError, match="pass a torch.nn.Module"):
        ANIL("not a model")


@pytest.mark.parametrize("name", NAMES)
def test_vmap_and_loop_paths_agree_on_a_batchnorm_conv4(name):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(2, 1)
    data = fm.TaskBatch(
        torch.rand(2, 3, 1, 16, 16, generator=g, dtype=torch.float64),
        labels,
        torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        labels.repeat_interleave(2, dim=1),
    )
    results = []
    for execution in ("vmap", "loop"):
        torch.manual_seed(0)
        model = fm.models.Conv4(ways=3, filters=4, image_size=16).double()
        algo = build(name, model, inner_lr=0.1, inner_steps=2, execution=execution)
        algo.begin_iteration(50, 100)
        results.append(grads(algo, algo.outer_loss(data)))
    assert_close(results[0], results[1], atol=1e-12)
    assert results[0]["model.features.0.weight"].abs().sum() > 0


# -- options declared once ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_takes_the_shared_options_in_the_same_order(name):
    import inspect

    cls = ALGORITHMS[name]
    params = list(inspect.signature(cls).parameters.values())
    shared = ["model", "inner_lr", "inner_steps", "first_order", "loss_fn"]
    assert [p.name for p in params[:5]] == shared
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:5])
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[5:])
    assert {"execution", "compile"} <= set(options(name)) and options(name)[:4] == tuple(shared[1:])
    first_order = name in ("fomaml", "reptile", "imaml")

    def loss_fn(prediction, target):
        return F.mse_loss(prediction, target)

    algo = cls(mlp(), 0.1, 2, first_order, loss_fn)
    assert algo.loss_fn is loss_fn and algo.inner_steps == 2 and algo.inner_lr == 0.1
