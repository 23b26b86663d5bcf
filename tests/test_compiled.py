"""The compiled outer step writes the same meta-gradient as ``outer_loss(batch).backward()``."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import fastmaml as fm
from fastmaml.core.compiled import CompiledOuterStep


def eager_grads(maml, batch):
    maml.zero_grad(set_to_none=True)
    loss = maml.outer_loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in maml.parameters()]


@pytest.mark.parametrize("first_order", [False])
def test_compiled_step_matches_eager_in_float64(first_order):
    torch.manual_seed(0)
    # Meta-SGD: the learned rates (rule state) must get their gradient too.
    model = fm.models.MLP([1, 8, 1]).double()
    maml = fm.MAML(model, 0.05, 2, first_order, F.mse_loss, rule=fm.core.meta_sgd(0.05))
    batch = fm.Sinusoid().sample_tasks(4, torch.Generator().manual_seed(0)).to(torch.float64)
    step = CompiledOuterStep(maml, dynamic=False)
    with warnings.catch_warnings():
        # A compile failure would fall back to eager with this warning.
        warnings.filterwarnings("error", message="torch.compile failed")
        maml.zero_grad(set_to_none=True)
        step(batch)  # eager: settles execution="auto" (vmap for the MLP)
        maml.zero_grad(set_to_none=True)
        loss = step(batch)  # compiled
    assert step._compiled is not None and step.execution == "compiled"
    compiled = [p.grad.clone() for p in maml.parameters()]
    expected_loss, expected = eager_grads(maml, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    assert len(compiled) == 8  # 4 model tensors + a learned rate for each
    for got, want in zip(compiled, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_compile_failure_warns_once_and_runs_eagerly(monkeypatch):
    maml = fm.MAML(fm.models.MLP([1, 4, 1]), 0.01, 1, False, F.mse_loss)
    batch = fm.Sinusoid().sample_tasks(3, torch.Generator().manual_seed(0))

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = CompiledOuterStep(maml)
    step(batch)
    maml.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        loss = step(batch)
    assert step.execution == "eager"
    got = [p.grad.clone() for p in maml.parameters()]
    expected_loss, expected = eager_grads(maml, batch)
    torch.testing.assert_close(loss, expected_loss)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # once only
        step(batch)
