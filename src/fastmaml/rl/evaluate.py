"""Meta-testing: average return before adaptation and after each inner step on fresh tasks, for the
meta-learned policy and the paper's baselines (pretrained on the task mixture, random initialisation,
oracle), each fine-tuned by the same inner steps; where the family's episodes report a per-episode ``success``
(Meta-World's), the success rate beside the return, on the family's own test tasks where it has them.
"""

from __future__ import annotations

import math

import torch

from fastmaml.core.params import Params, detached
from fastmaml.rl.learner import MetaRL
from fastmaml.rl.sampler import sample_tasks


def returns_by_step(learner: MetaRL, family, tasks: list, steps: int, generator: torch.Generator,
                    params: Params | None = None) -> torch.Tensor:
    """(tasks, steps + 1) mean return per task: of the episodes sampled before each inner step and after
    the last; each step adapts on the episodes just sampled (fresh ones every step, as in training)."""
    return scores_by_step(learner, family, tasks, steps, generator, params)[0]


def scores_by_step(learner: MetaRL, family, tasks: list, steps: int, generator: torch.Generator,
                   params: Params | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`returns_by_step`, and the success rate per task (tasks, steps + 1) when the family's episodes
    report a per-episode ``success`` (Meta-World's, :mod:`fastmaml.rl.metaworld`), else None."""
    base = detached(params if params is not None else learner.meta_params())
    policy = {name: p for name, p in base.items() if name in learner.params()}
    current = {name: p.unsqueeze(0).expand(len(tasks), *p.shape) for name, p in policy.items()}
    returns, successes, train = [], [], []
    for k in range(steps + 1):
        episodes = learner.sample(family, tasks, current, generator, batched=True)
        returns.append(episodes.returns().mean(1))
        success = getattr(episodes, "success", None)  # (tasks, N), 1 where an episode solved its task
        if success is not None:
            successes.append(success.mean(1))
        if k < steps:
            # the same per-task adaptation as training, from the initialisation on every step's episodes
            train.append(episodes)
            current = learner.adapt_tasks(base, train)
    return torch.stack(returns, 1), (torch.stack(successes, 1) if len(successes) == steps + 1 else None)


def oracle_returns(family, tasks: list, trajectories: int, horizon: int, dtype: torch.dtype) -> torch.Tensor:
    """(tasks,) mean return of the family's ``oracle_action`` (a policy that knows the task)."""
    def act(obs: torch.Tensor):
        action = family.oracle_action(tasks, obs)
        return action, (action, torch.zeros_like(action))

    return family.rollout(act, tasks, trajectories, horizon, dtype).returns().mean(1)


def summarise(per_task: torch.Tensor) -> list[dict]:
    """Mean and 95% confidence half-width (normal approximation) over tasks, for each column."""
    per_task = per_task.double().reshape(per_task.shape[0], -1)
    n = per_task.shape[0]
    std = per_task.std(0, unbiased=True) if n > 1 else torch.zeros(per_task.shape[1], dtype=torch.float64)
    return [{"steps": k, "mean": float(per_task[:, k].mean()), "ci95": float(1.96 * std[k] / math.sqrt(n))}
            for k in range(per_task.shape[1])]


def evaluate(learners: dict[str, MetaRL], family, num_tasks: int, steps: int, seed: int) -> dict:
    """Every learner on the same ``num_tasks`` fresh tasks (drawn from ``seed``), plus the oracle when the
    family has one; ``{name: {"returns": [{"steps", "mean", "ci95"}, ...]}}``.

    Every method after the first also gets ``"paired"``: the first method's return minus its own, task by
    task (the same tasks and sampling noise), mean and 95% CI per step: a comparison far tighter than two
    overlapping intervals, since the spread between tasks cancels."""
    if num_tasks < 1:
        raise ValueError(f"tasks={num_tasks}; evaluate on at least 1 task (the protocol uses 40)")
    if steps < 0:
        raise ValueError(f"steps={steps}; evaluate with at least 0 inner steps")
    test_tasks = getattr(family, "sample_test_tasks", None)  # a benchmark's own meta-test set (Meta-World's)
    tasks = (list(test_tasks(num_tasks, torch.Generator().manual_seed(seed))) if test_tasks is not None
             else sample_tasks(family, num_tasks, torch.Generator().manual_seed(seed)))
    results: dict[str, dict] = {}
    first_name, first_returns = next(iter(learners)), None
    for name, learner in learners.items():
        # the same sampling noise for every method: differences come from the parameters alone
        generator = torch.Generator().manual_seed(seed + 1)
        per_task, success = scores_by_step(learner, family, tasks, steps, generator)
        results[name] = {"returns": summarise(per_task)}
        if success is not None:
            results[name]["success"] = summarise(success)
        if first_returns is None:
            first_returns = per_task
        else:
            results[name]["paired"] = {"minuend": first_name, "returns": summarise(first_returns - per_task)}
    first = learners[first_name]
    if hasattr(family, "oracle_action") and hasattr(family, "rollout"):
        dtype = next(iter(first.params().values())).dtype
        oracle = oracle_returns(family, tasks, first.trajectories, first.horizon, dtype)
        results["oracle"] = {"returns": summarise(oracle.unsqueeze(1).expand(-1, steps + 1))}
    return results


def format_table(results: dict) -> str:
    """Average return by inner steps, one row per method (mean ± 95% CI), then the paired differences, then
    the success rates in percent where the family reports them (Meta-World)."""
    steps = len(next(iter(results.values()))["returns"])
    labelled = [(name, result["returns"], "") for name, result in results.items()]
    labelled += [(f"{result['paired']['minuend']} - {name}", result["paired"]["returns"], "+")
                 for name, result in results.items() if "paired" in result]
    width = max(12, *(len(label) + 1 for label, _, _ in labelled))
    successes = [(f"{name} success %", [{k: 100 * r[k] for k in ("mean", "ci95")} for r in result["success"]], "")
                 for name, result in results.items() if "success" in result]
    width = max(width, *(len(label) + 1 for label, _, _ in successes)) if successes else width
    rows = [f"{'method':<{width}}" + "".join(f"{f'{k} steps':>18}" for k in range(steps))]
    for label, returns, sign in labelled + successes:
        rows.append(f"{label:<{width}}" + "".join(f"{r['mean']:>{sign}10.2f} ± {r['ci95']:<5.2f}" for r in returns))
    return "\n".join(rows)
