"""Independent reference computations the library is checked against."""

import torch
from torch.func import functional_call


def reference_meta_gradient(model, batch, lr, steps, first_order, loss_fn, adapt_names=None):
    """MAML's meta-gradient by a plain Python loop over tasks with ``torch.autograd.grad``.

    Uses the module's own layers (native BatchNorm, no vmap), so it shares no code path with fastmaml's.
    """
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    adapt_names = set(names if adapt_names is None else adapt_names)
    total = 0.0
    for i in range(len(batch)):
        fast = list(params)
        for _ in range(steps):
            loss = loss_fn(functional_call(model, dict(zip(names, fast)), (batch.support_x[i],)), batch.support_y[i])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order, allow_unused=True)
            fast = [p - lr * g if (n in adapt_names and g is not None) else p for n, p, g in zip(names, fast, grads)]
        total = total + loss_fn(functional_call(model, dict(zip(names, fast)), (batch.query_x[i],)), batch.query_y[i])
    return dict(zip(names, torch.autograd.grad(total / len(batch), params)))


def meta_gradient(algorithm, batch, **kwargs):
    """The meta-gradient fastmaml computes, as a dict keyed by model parameter name."""
    algorithm.zero_grad(set_to_none=True)
    algorithm.outer_loss(batch, **kwargs).backward()
    return {n: p.grad.clone() for n, p in algorithm.model.named_parameters()}


def assert_close_dicts(a, b, rtol=1e-10, atol=1e-12):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
