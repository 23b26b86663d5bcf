"""The two baselines of the MAML paper's regression experiment (section 5.1, Figure 2).

*Pretrained*: one network trained jointly on all meta-training tasks, then fine-tuned on each test
task's support set. *Scratch*: a randomly initialised network fine-tuned on the support set alone.
Both fine-tune with plain gradient descent whose step size is tuned on validation tasks (the paper
uses "an automatically tuned step size"), so they are evaluated by the same code path as MAML.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.algorithms.maml import MAML

STEP_SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def pretrain(model: nn.Module, tasks, generator: torch.Generator, iterations: int, meta_batch_size: int,
             lr: float = 1e-3) -> nn.Module:
    """Supervised regression on the pooled support and query points of sampled training tasks."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iterations):
        batch = tasks.sample_tasks(meta_batch_size, generator)
        x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)  # (tasks * points, 1)
        y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    return model


def tune_step_size(model: nn.Module, tasks, generator: torch.Generator, steps: int, num_tasks: int = 100) -> float:
    """The step size from :data:`STEP_SIZES` with the lowest mean query loss after ``steps`` steps."""
    batch = tasks.sample_tasks(num_tasks, generator)
    scores: dict[float, float] = {}
    for lr in STEP_SIZES:
        with torch.no_grad():
            losses, _ = MAML(model, inner_lr=lr, inner_steps=steps).task_losses(batch)
        scores[lr] = losses.mean().item()
    return min(scores, key=lambda lr: scores[lr])
