"""Small float64 fixtures shared by the algorithm tests."""

from __future__ import annotations

import torch
from torch import nn

import fastmaml as fm


def batch(tasks: int = 3, shots: int = 5, seed: int = 0) -> fm.TaskBatch:
    return fm.Sinusoid(shots=shots, dtype=torch.float64).sample_tasks(
        tasks, torch.Generator().manual_seed(seed)
    )


def mlp(
    sizes: tuple[int, ...] = (1, 6, 6, 1), seed: int = 0, activation: type[nn.Module] = nn.Tanh
) -> nn.Module:
    torch.manual_seed(seed)
    return fm.models.MLP(list(sizes), activation=activation).double()


def bn_mlp(seed: int = 0, track: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(1, 6), nn.BatchNorm1d(6, track_running_stats=track), nn.Tanh(), nn.Linear(6, 1)
    )
    with torch.no_grad():  # non-trivial affine BatchNorm parameters
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.double()


def grads(algo: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Meta-gradient of ``loss`` w.r.t. every parameter of ``algo`` (zeros where none flows)."""
    algo.zero_grad(set_to_none=True)
    loss.backward()
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in algo.named_parameters()
    }


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], atol=atol, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")
