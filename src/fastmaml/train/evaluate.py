"""The evaluation protocol: fresh meta-test tasks, metrics after each inner step, 95% confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

# Tasks adapted at once during evaluation: bounds memory, not results.
EVAL_CHUNK = 25


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = values.double()
    if values.numel() < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def evaluate(
    algorithm: nn.Module,
    tasks,
    num_tasks: int,
    inner_steps: int,
    generator: torch.Generator,
    chunk: int = EVAL_CHUNK,
) -> dict:
    """Adapt to ``num_tasks`` fresh tasks and score the query sets after 0..``inner_steps`` steps.

    Returns a dict with ``loss`` (and ``accuracy`` for classification): lists over steps of
    ``{"mean", "ci95"}``, plus ``tasks`` and ``inner_steps``. Accuracy is in percent.

    Example:
        >>> maml = fm.MAML(fm.models.MLP([1, 40, 40, 1]))
        >>> result = evaluate(maml, fm.Sinusoid(), num_tasks=10, inner_steps=2, generator=torch.Generator())
        >>> result["tasks"], len(result["loss"])  # before adaptation and after each of the 2 steps
        (10, 3)
        >>> sorted(result["loss"][-1])  # the mean query loss and its 95% confidence interval
        ['ci95', 'mean']
    """
    losses, accuracies = task_scores(algorithm, tasks, num_tasks, inner_steps, generator, chunk)
    result: dict = {"tasks": num_tasks, "inner_steps": inner_steps}
    result["loss"] = _per_step(losses)
    if accuracies is not None:
        result["accuracy"] = _per_step(accuracies)
    return result


def task_scores(
    algorithm: nn.Module,
    tasks,
    num_tasks: int,
    inner_steps: int,
    generator: torch.Generator,
    chunk: int = EVAL_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Per-task query loss and accuracy (percent; None for regression), each ``(num_tasks, inner_steps + 1)``:
    before adaptation and after each step. The same generator state gives the same tasks, so two
    algorithms' scores can be compared task by task."""
    losses, accuracies = [], []
    device, dtype = next(algorithm.parameters()).device, next(algorithm.parameters()).dtype
    with torch.no_grad():
        for start in range(0, num_tasks, chunk):
            batch = tasks.sample_tasks(min(chunk, num_tasks - start), generator).to(device=device, dtype=dtype)
            # every algorithm has task_losses; nn.Module's __getattr__ types it as a Tensor or Module
            task_losses = cast(Callable[..., tuple[Tensor, Tensor]], algorithm.task_losses)
            step_losses, predictions = task_losses(batch, inner_steps, track=True)
            losses.append(step_losses)  # (tasks, steps + 1)
            if not batch.query_y.is_floating_point():
                # predictions (tasks, steps + 1, query, ways); labels (tasks, query)
                hits = predictions.argmax(-1) == batch.query_y.unsqueeze(1)
                accuracies.append(100.0 * hits.double().mean(-1))
    return torch.cat(losses), torch.cat(accuracies) if accuracies else None


def _per_step(values: Tensor) -> list[dict]:
    """(tasks, steps + 1) -> per step {"mean", "ci95"}."""
    return [dict(zip(("mean", "ci95"), mean_ci95(values[:, s]))) for s in range(values.shape[1])]


def format_table(results: dict[str, dict], metric: str, steps: tuple[int, ...] = (0, 1, 2, 3, 5, 10)) -> str:
    """A plain-text table: one row per method, a column per listed inner step (and the last), ``mean ± ci95``."""
    last = max(len(r[metric]) for r in results.values()) - 1
    shown = sorted({s for s in steps if s <= last} | {last})
    rows = [f"{metric:<12}" + "".join(f"{f'step {s}':>17}" for s in shown)]
    for name, result in results.items():
        cells = "".join(f"{result[metric][s]['mean']:>10.3f} ± {result[metric][s]['ci95']:<5.3f}" for s in shown)
        rows.append(f"{name:<12}{cells}")
    return "\n".join(rows)
