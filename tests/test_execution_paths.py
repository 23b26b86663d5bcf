"""Every execution path gives the meta-gradient of a plain ``torch.autograd.grad`` loop, in float64.

The model is a small Conv-4 with BatchNorm on batch statistics: vmap runs the plain-op batch norm, the
loop (per-task gradients) and the plain graph run the native kernel, the reference runs the module as written.
"""

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm
from fastmaml.core.batchnorm import batch_norm, native_batch_norm
from fastmaml.core import execution as execution_module
from fastmaml.core.execution import VMAP_MAX_CONV_INPUTS, decide
from fastmaml.core.objective import QueryLoss
from helpers import reference_meta_gradient

LR = 0.3


def conv_problem(pool):
    torch.manual_seed(0)
    side = 8 if pool == "stride" else 16
    model = fm.models.Conv4(in_channels=1, ways=3, filters=4, pool=pool, image_size=side).double()
    g = torch.Generator().manual_seed(1)
    support_y = torch.arange(3).repeat(3, 1)  # (tasks=3, 3 ways x 1 shot)
    query_y = torch.arange(3).repeat_interleave(2).repeat(3, 1)  # (3, 6)
    batch = fm.TaskBatch(torch.randn(3, 3, 1, side, side, generator=g, dtype=torch.float64), support_y,
                         torch.randn(3, 6, 1, side, side, generator=g, dtype=torch.float64), query_y)
    return model, batch


def grads_of(maml):
    return {n: p.grad.clone() for n, p in maml.model.named_parameters()}


def via_outer_loss(maml, batch):
    maml.outer_loss(batch).backward()
    return grads_of(maml)


def via_graph(maml, batch):
    maml.outer_loss(batch, graph=True).backward()
    return grads_of(maml)


PATHS = {
    "loop": ("loop", via_outer_loss),
    "vmap": ("vmap", via_outer_loss),
    "auto": ("auto", via_outer_loss),
    "graph-loop": ("loop", via_graph),
    "graph-vmap": ("vmap", via_graph),
}


@pytest.mark.parametrize("pool", ["stride", "max"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_every_path_matches_autograd_reference(pool, steps, first_order):
    model, batch = conv_problem(pool)
    expected = reference_meta_gradient(model, batch, LR, steps, first_order, F.cross_entropy)
    for path, (execution, run) in PATHS.items():
        maml = fm.MAML(model, LR, steps, first_order, F.cross_entropy, execution=execution)
        got = run(maml, batch)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12,
                                       msg=lambda m, p=path, n=name: f"{p} {n}: {m}")
        model.zero_grad(set_to_none=True)


def test_plain_and_native_batch_norm_agree_and_never_write_running_stats():
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    for training in (True, False):
        plain = batch_norm(x, mean, var, w, b, training=training)
        native = native_batch_norm(x, mean, var, w, b, training=training)
        torch.testing.assert_close(plain, native, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(native, F.batch_norm(x, mean.clone(), var.clone(), w, b, training=training))
    assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.ones_like(var))


def test_backward_accumulates_into_existing_grad_and_scales_by_grad_output():
    model, batch = conv_problem("stride")
    maml = fm.MAML(model, LR, 1, False, F.cross_entropy, execution="loop")
    loss = maml.outer_loss(batch)
    loss.backward()
    once = grads_of(maml)
    (3 * maml.outer_loss(batch)).backward()
    for name, g in grads_of(maml).items():
        torch.testing.assert_close(g, 4 * once[name])
    torch.testing.assert_close(loss.detach(), maml.outer_loss(batch, graph=True).detach())


def test_auto_is_decided_once_from_the_model_and_the_task_size(monkeypatch):
    conv, small = conv_problem("stride")
    mlp = fm.models.MLP([1, 4, 1])
    assert decide(mlp, torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)) == "vmap"
    assert decide(conv, *small.tensors()) == "vmap"  # 9 images of 8x8 per task
    # The paper's Omniglot 5-way tasks (5 + 5 images of 28x28) are vmapped; 5 + 75 images, and the
    # 20-way 1-shot tasks (20 + 20), are looped (benchmarks/RESULTS.md measured each).
    images = lambda n: torch.zeros(2, n, 1, 28, 28)  # noqa: E731
    assert decide(conv, images(5), None, images(5)) == "vmap"
    assert decide(conv, images(5), None, images(25)) == "vmap"
    assert decide(conv, images(5), None, images(75)) == "loop"
    assert decide(conv, images(20), None, images(20)) == "loop"
    assert 40 * 28 * 28 > VMAP_MAX_CONV_INPUTS >= 30 * 28 * 28
    assert decide(None, images(5), None, images(75)) == "loop"
    # MLPs: the loop from about 150,000 activations per task (rows x widest layer; RESULTS.md measured it)
    rows = lambda n: torch.zeros(2, n, 17)  # noqa: E731
    policy = fm.models.MLP([17, 100, 100, 6])
    assert decide(policy, rows(500), None, rows(500)) == "vmap"  # 100,000
    assert decide(policy, rows(1000), None, rows(1000)) == "loop"  # 200,000
    assert decide(policy, torch.zeros(2, 20, 100, 17), None, torch.zeros(2, 20, 100, 17)) == "loop"  # episodes
    assert decide(mlp, torch.zeros(2, 4000, 1), None, torch.zeros(2, 4000, 1)) == "vmap"  # 4 wide
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 5))
    assert decide(flat, images(5), None, images(5)) == "vmap"  # 10 rows of 784 per task, not 280
    assert decide(flat, images(100), None, images(300)) == "loop"  # 400 x 784
    assert decide(policy, rows(500), None, None) == "vmap" and decide(policy, rows(0), None, rows(0)) == "vmap"
    # Never vmap where the batch-norm module says vmap is not exact for the model.
    monkeypatch.setattr(execution_module, "vmap_is_exact", lambda model: model is not conv)
    assert decide(conv, *small.tensors()) == "loop" and decide(mlp, torch.zeros(2, 3, 1)) == "vmap"
    maml = fm.MAML(conv, LR, 1, False, F.cross_entropy)
    maml.outer_loss(small)
    assert maml.mapper.execution == "loop" and maml.engine.last_path == "loop"
    with pytest.raises(ValueError, match="pick one of"):
        fm.MAML(conv, execution="fast")


def test_an_objective_plugs_in_without_subclassing():
    model, batch = conv_problem("stride")
    maml = fm.MAML(model, LR, 1, False, F.cross_entropy)
    expected = {n: 2 * g for n, g in via_outer_loss(maml, batch).items()}
    model.zero_grad(set_to_none=True)
    maml.objective = lambda ctx, *task: (2 * QueryLoss()(ctx, *task)[0], ())
    for name, g in via_outer_loss(maml, batch).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-12, atol=1e-14)


def test_the_precomputed_loss_refuses_create_graph_and_the_graph_path_gives_second_derivatives():
    model, batch = conv_problem("stride")
    maml = fm.MAML(model, LR, 1, False, F.cross_entropy)
    params = list(maml.parameters())
    with pytest.raises(RuntimeError, match="outer_loss\\(batch, graph=True\\)"):
        torch.autograd.grad(maml.outer_loss(batch), params, create_graph=True)
    fast = torch.autograd.grad(maml.outer_loss(batch), params)
    exact = torch.autograd.grad(maml.outer_loss(batch, graph=True), params, create_graph=True)
    for f, e in zip(fast, exact):
        torch.testing.assert_close(f, e.detach(), rtol=1e-10, atol=1e-12)
    assert exact[0].requires_grad  # differentiable again


def test_no_grad_computes_only_the_loss_and_inputs_that_require_grad_get_the_plain_graph():
    model, batch = conv_problem("stride")
    maml = fm.MAML(model, LR, 1, False, F.cross_entropy)
    with torch.no_grad():
        loss = maml.outer_loss(batch)
    assert loss.grad_fn is None and maml.engine.last_path == "no_grad"
    torch.testing.assert_close(loss, maml.outer_loss(batch).detach())
    query_x = batch.query_x.clone().requires_grad_()
    maml.outer_loss(fm.TaskBatch(batch.support_x, batch.support_y, query_x, batch.query_y)).backward()
    assert maml.engine.last_path == "graph" and query_x.grad is not None and query_x.grad.abs().sum() > 0


class ItemModel(nn.Module):
    """``.item()`` in forward: vmap cannot run it, the loop can."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x):
        return self.lin(x) * (1.0 if x.sum().item() > -1e9 else 0.0)


def test_auto_falls_back_to_loop_with_one_warning():
    maml = fm.MAML(ItemModel(), 0.1, 1, False, F.mse_loss)
    mapper = maml.mapper
    batch = fm.TaskBatch(torch.randn(2, 3, 1), torch.randn(2, 3, 1), torch.randn(2, 3, 1), torch.randn(2, 3, 1))
    with pytest.warns(UserWarning, match="execution='loop'"):
        maml.outer_loss(batch)
    assert mapper.execution == "loop"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maml.outer_loss(batch)


def test_an_empty_meta_batch_contributes_zero_loss_and_zero_gradient():
    """A rank whose share of a small meta-batch is empty adds nothing to the all-reduced sums."""
    model, batch = conv_problem("stride")
    for name in ("maml", "mamlpp", "reptile"):
        algo = fm.build(name, model, inner_lr=LR, inner_steps=1)
        empty = batch[0:0]
        loss = algo.outer_loss(empty)
        algo.zero_grad(set_to_none=True)
        loss.backward()
        assert loss.item() == 0.0 and algo.engine.last_path == "empty"
        assert all(p.grad is not None and not p.grad.any() for p in algo.parameters())


def test_the_execution_decision_is_logged_once_per_run(tmp_path, caplog, monkeypatch):
    """A run builds many algorithm objects (baselines, step-size tuning, evaluation): one line for the decision."""
    from fastmaml.core import execution
    from fastmaml.train import config as cfg
    from fastmaml.train import run as runs

    monkeypatch.setattr(execution, "_LOGGED", set())
    config = cfg.resolve("sinusoid", ["iterations=4", "log_every=2", "baseline_iterations=4", "eval_tasks=5",
                                      "meta_batch_size=2", "compile=false"])
    with caplog.at_level(logging.INFO, logger="fastmaml.core.execution"):
        runs.train(config, tmp_path / "run", progress=False)
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("execution=auto")]
    assert decisions == ["execution=auto: vmap for MLP on cpu (20 input elements per task)"]
