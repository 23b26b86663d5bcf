"""Every execution path gives the meta-gradient of a plain ``torch.autograd.grad`` loop, in float64.

The model is a small Conv-4 with BatchNorm on batch statistics: vmap runs the plain-op batch norm, the
loop and the per-task-backward step run the native kernel, the reference runs the module as written.
"""

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmaml as fm
from fastmaml.core.batchnorm import batch_norm, native_batch_norm
from fastmaml.core.compiled import CompiledOuterStep, OuterStep, outer_step
from fastmaml.core.execution import TaskMapper, prefers_loop
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


def via_step(execution, maml, batch):
    OuterStep(maml, execution)(batch)
    return grads_of(maml)


PATHS = {
    "loop": ("loop", via_outer_loss),
    "vmap": ("vmap", via_outer_loss),
    "auto": ("auto", via_outer_loss),
    "step-loop": ("auto", functools.partial(via_step, "loop")),
    "step-outer-loss": ("vmap", functools.partial(via_step, "outer_loss")),
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


def test_step_accumulates_into_existing_grad_like_backward():
    model, batch = conv_problem("stride")
    maml = fm.MAML(model, LR, 1, False, F.cross_entropy)
    loss = OuterStep(maml, "loop")(batch)
    once = grads_of(maml)
    OuterStep(maml, "loop")(batch)
    for name, g in grads_of(maml).items():
        torch.testing.assert_close(g, 2 * once[name])
    torch.testing.assert_close(loss, maml.outer_loss(batch).detach())


def test_auto_picks_loop_for_convolutions_and_vmap_otherwise():
    conv, batch = conv_problem("stride")
    mlp = fm.models.MLP([1, 4, 1])
    assert prefers_loop(conv, *batch.tensors()) and not prefers_loop(mlp, torch.zeros(2, 3, 1))
    assert prefers_loop(None, *batch.tensors()) and not prefers_loop(None, torch.zeros(2, 3, 1))
    maml = fm.MAML(conv, LR, 1, False, F.cross_entropy)
    maml.outer_loss(batch)
    assert maml.mapper.execution == "loop"
    assert isinstance(outer_step(maml), OuterStep) and outer_step(maml).execution == "loop"
    assert isinstance(outer_step(fm.MAML(mlp)), CompiledOuterStep)
    with pytest.raises(ValueError, match="pick one of"):
        outer_step(maml, "fast")


class WeightedMAML(fm.MAML):
    def outer_loss(self, batch, inner_steps=None):
        return 2 * super().outer_loss(batch, inner_steps)


def test_algorithms_that_override_the_loss_get_the_outer_loss_path():
    conv, batch = conv_problem("stride")
    maml = WeightedMAML(conv, LR, 1, False, F.cross_entropy)
    step = outer_step(maml)
    assert step.execution == "outer_loss"
    loss = step(batch)
    torch.testing.assert_close(loss, maml.outer_loss(batch).detach())
    with pytest.raises(ValueError, match="overrides the outer loss"):
        OuterStep(maml, "loop")


class ItemModel(nn.Module):
    """``.item()`` in forward: vmap cannot run it, the loop can."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x):
        return self.lin(x) * (1.0 if x.sum().item() > -1e9 else 0.0)


def test_auto_falls_back_to_loop_with_one_warning():
    mapper = TaskMapper("auto", owner="ItemModel", model=ItemModel())
    maml = fm.MAML(ItemModel(), 0.1, 1, False, F.mse_loss)
    maml.mapper = mapper
    batch = fm.TaskBatch(torch.randn(2, 3, 1), torch.randn(2, 3, 1), torch.randn(2, 3, 1), torch.randn(2, 3, 1))
    with pytest.warns(UserWarning, match="execution='loop'"):
        maml.outer_loss(batch)
    assert mapper.execution == "loop"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maml.outer_loss(batch)
