"""The compiled path of ``outer_loss(batch).backward()`` gives plain autograd's meta-gradient in float64.

Inductor compiles take seconds each, so Inductor itself runs for second-order MAML (against
the independent reference loop of helpers.py); every algorithm runs through the same capture
(dynamo + AOT autograd of ``grad_and_value``) with the ``aot_eager`` backend, against the plain graph
(``graph=True``), which the algorithm tests check against independent computations.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import fastmaml as fm
from algo_helpers import batch as sinusoid_batch
from algo_helpers import mlp
from fastmaml.algorithms import build
from fastmaml.core import compiled
from helpers import reference_meta_gradient

NAMES = ("maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "imaml")


def all_grads(algo, loss):
    algo.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else None for n, p in algo.named_parameters()}


def run_compiled(algo, data, backend=None):
    if backend is not None:
        algo.engine.compile_options = {"backend": backend}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # a failure would fall back to eager
        algo.outer_loss(data).backward()  # eager: settles the task mapper
        loss = algo.outer_loss(data)
    assert algo.engine.last_path == "compiled"
    return loss.detach(), all_grads(algo, loss)


@pytest.mark.parametrize("first_order", [False])  # first order: every algorithm below, through aot_eager
def test_inductor_compiled_idiom_matches_the_reference_loop(first_order):
    model, data = mlp((1, 8, 1)), sinusoid_batch(tasks=4)
    maml = fm.MAML(model, 0.05, 2, first_order, F.mse_loss, compile=True)
    loss, got = run_compiled(maml, data)
    expected = reference_meta_gradient(model, data, 0.05, 2, first_order, F.mse_loss)
    torch.testing.assert_close(loss, maml.outer_loss(data, graph=True).detach(), rtol=1e-12, atol=1e-12)
    for name, want in expected.items():
        torch.testing.assert_close(got["model." + name], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, first_order", [(n, o) for n in NAMES for o in (False, True)
                                               if not (n in ("fomaml", "reptile", "imaml") and not o)])
def test_every_algorithm_compiled_matches_plain_autograd(name, first_order):
    options = {"first_order_fraction": 0.0, "multi_step_loss_fraction": 0.0} if name == "mamlpp" else {}
    data = sinusoid_batch(tasks=3)
    algo = build(name, mlp(), inner_lr=0.1, inner_steps=1, first_order=first_order, compile=True, **options)
    algo.begin_iteration(0, 10)
    loss, got = run_compiled(algo, data, backend="aot_eager")
    plain = algo.outer_loss(data, graph=True)
    want = all_grads(algo, plain)
    torch.testing.assert_close(loss, plain.detach(), rtol=1e-12, atol=1e-12)
    assert got.keys() == want.keys() and any(g is not None and g.abs().sum() > 0 for g in got.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")


def test_auto_compiles_once_eager_time_would_pay_for_it_and_never_the_conv_loop(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_AFTER_S", 0.0)
    data = sinusoid_batch(tasks=3)
    maml = fm.MAML(mlp(), 0.1, 1)
    maml.engine.compile_options = {"backend": "aot_eager"}
    maml.outer_loss(data).backward()
    assert maml.engine.last_path == "vmap"
    maml.outer_loss(data).backward()
    assert maml.engine.last_path == "compiled"
    conv = fm.models.Conv4(in_channels=1, ways=2, filters=2, image_size=8).double()
    images = fm.TaskBatch(torch.randn(2, 2, 1, 8, 8, dtype=torch.float64), torch.arange(2).repeat(2, 1),
                          torch.randn(2, 2, 1, 8, 8, dtype=torch.float64), torch.arange(2).repeat(2, 1))
    algo = fm.MAML(conv, 0.1, 1)
    for _ in range(3):
        algo.outer_loss(images).backward()
        assert algo.engine.last_path != "compiled"
    with pytest.raises(ValueError, match="compile='sometimes'; use True, False or 'auto'"):
        fm.MAML(mlp(), compile="sometimes")


def test_the_compiled_step_keeps_no_growing_record():
    maml = fm.MAML(mlp(), 0.1, 1, compile=True)
    maml.engine.compile_options = {"backend": "aot_eager"}
    data = sinusoid_batch(tasks=3)
    for _ in range(3 * compiled._TRIALS):
        maml.outer_loss(data).backward()
    assert maml.engine.last_path == "compiled"
    assert [len(timed) for timed in maml.engine._compiled_s.values()] == [compiled._TRIALS + 1]


def test_compile_failure_warns_once_and_runs_eagerly(monkeypatch):
    maml = fm.MAML(mlp(), 0.01, 1, False, F.mse_loss, compile=True)
    data = sinusoid_batch(tasks=3)

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    maml.outer_loss(data).backward()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        loss = maml.outer_loss(data)
    assert maml.engine.failed and maml.engine.last_path == "vmap"
    got = all_grads(maml, loss)
    want = all_grads(maml, maml.outer_loss(data, graph=True))
    for n in want:
        torch.testing.assert_close(got[n], want[n])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # once only
        maml.outer_loss(data)
