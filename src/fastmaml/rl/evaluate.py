"""Meta-testing: average return before adaptation and after each inner step on fresh tasks, for the
meta-learned policy and the paper's baselines (pretrained on the task mixture, random initialisation,
oracle), each fine-tuned by the same inner steps; where the family's episodes report a per-episode ``success``
(Meta-World's), the success rate beside the return, on the family's own test tasks where it has them.

The scores are those of the episodes each step samples (and adapts on). With ``mean_episodes`` > 0, each
policy is also scored on that many further episodes of its mean action before adaptation and after each step,
which the adaptation never sees: Meta-World's own protocol (``metaworld.evaluation.metalearning_evaluation``:
adapt on 10 sampled episodes, then score 3 episodes of the agent's ``eval_action``).
"""

from __future__ import annotations

import math

import torch

from dataclasses import dataclass

from torch import Tensor

from fastmaml.core.params import Params, detached
from fastmaml.rl.episodes import Episodes
from fastmaml.rl.learner import MetaRL
from fastmaml.rl.sampler import collect, sample_tasks


@dataclass(frozen=True)
class Scores:
    """Per task (tasks, steps + 1): the return and success rate (None where the family reports no success)
    of the episodes sampled before each inner step and after the last; ``mean_*``: of the mean-action
    episodes scored beside them (None without ``mean_episodes``)."""

    returns: Tensor
    success: Tensor | None = None
    mean_returns: Tensor | None = None
    mean_success: Tensor | None = None


def returns_by_step(learner: MetaRL, family, tasks: list, steps: int, generator: torch.Generator,
                    params: Params | None = None) -> torch.Tensor:
    """(tasks, steps + 1) mean return per task: of the episodes sampled before each inner step and after
    the last; each step adapts on the episodes just sampled (fresh ones every step, as in training)."""
    return scores_by_step(learner, family, tasks, steps, generator, params).returns


def scores_by_step(learner: MetaRL, family, tasks: list, steps: int, generator: torch.Generator,
                   params: Params | None = None, mean_episodes: int = 0,
                   mean_generator: torch.Generator | None = None) -> Scores:
    """:func:`returns_by_step`, the success rate per task when the family's episodes report a per-episode
    ``success`` (Meta-World's, :mod:`fastmaml.rl.metaworld`), and with ``mean_episodes`` > 0 the scores of
    that many episodes of the mean action at every step, drawn (start states, where the family draws them)
    from ``mean_generator``, so the sampled episodes are the same with or without them."""
    base = detached(params if params is not None else learner.meta_params())
    policy = {name: p for name, p in base.items() if name in learner.params()}
    current = {name: p.unsqueeze(0).expand(len(tasks), *p.shape) for name, p in policy.items()}
    mean_generator = mean_generator if mean_generator is not None else torch.Generator().manual_seed(0)
    sampled: list[Episodes] = []
    greedy: list[Episodes] = []
    train: list[Episodes] = []
    for k in range(steps + 1):
        episodes = learner.sample(family, tasks, current, generator, batched=True)
        sampled.append(episodes)
        if mean_episodes:
            greedy.append(collect(family, learner.policy, current, tasks, mean_episodes, learner.horizon,
                                  mean_generator, batched=True, mean_action=True))
        if k < steps:
            # the same per-task adaptation as training, from the initialisation on every step's episodes
            train.append(episodes)
            current = learner.adapt_tasks(base, train)
    returns, success = _columns(sampled)
    mean_returns, mean_success = _columns(greedy) if greedy else (None, None)
    return Scores(returns, success, mean_returns, mean_success)


def _columns(steps: list[Episodes]) -> tuple[Tensor, Tensor | None]:
    """(tasks, len(steps)) mean return per task and step, and mean success where every step reports it."""
    returns = torch.stack([episodes.per_task_mean(episodes.returns()) for episodes in steps], 1)
    success = [episodes.success for episodes in steps]  # (tasks, N) per step, 1 where an episode solved its task
    if any(s is None for s in success):
        return returns, None
    return returns, torch.stack([e.per_task_mean(s) for e, s in zip(steps, success) if s is not None], 1)


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


def evaluate(learners: dict[str, MetaRL], family, num_tasks: int, steps: int, seed: int,
             mean_episodes: int = 0) -> dict:
    """Every learner on the same ``num_tasks`` fresh tasks (drawn from ``seed``), plus the oracle when the
    family has one; ``{name: {"returns": [{"steps", "mean", "ci95"}, ...]}}``.

    Every method after the first also gets ``"paired"``: the first method's return minus its own, task by
    task (the same tasks and sampling noise), mean and 95% CI per step: a comparison far tighter than two
    overlapping intervals, since the spread between tasks cancels; where the family reports success, its
    ``"success"`` and ``"mean_action_success"`` are paired the same way. With ``mean_episodes`` > 0 every method
    also gets ``"mean_action"``: ``{"episodes", "returns", "success"}`` of that many mean-action episodes per
    task and step (Meta-World's protocol: 3)."""
    if num_tasks < 1:
        raise ValueError(f"tasks={num_tasks}; evaluate on at least 1 task (the protocol uses 40)")
    if steps < 0:
        raise ValueError(f"steps={steps}; evaluate with at least 0 inner steps")
    if mean_episodes < 0:
        raise ValueError(f"mean_episodes={mean_episodes}; score at least 0 episodes of the mean action")
    test_tasks = getattr(family, "sample_test_tasks", None)  # a benchmark's own meta-test set (Meta-World's)
    tasks = (list(test_tasks(num_tasks, torch.Generator().manual_seed(seed))) if test_tasks is not None
             else sample_tasks(family, num_tasks, torch.Generator().manual_seed(seed)))
    results: dict[str, dict] = {}
    first_name, first_scores = next(iter(learners)), None
    for name, learner in learners.items():
        # the same sampling noise for every method: differences come from the parameters alone
        generator = torch.Generator().manual_seed(seed + 1)
        scores = scores_by_step(learner, family, tasks, steps, generator, mean_episodes=mean_episodes,
                                mean_generator=torch.Generator().manual_seed(seed + 2))
        results[name] = {"returns": summarise(scores.returns)}
        if scores.success is not None:
            results[name]["success"] = summarise(scores.success)
        if first_scores is None:
            first_scores = scores
        else:
            results[name]["paired"] = _paired(first_name, first_scores, scores)
        if scores.mean_returns is not None:
            mean_action = {"episodes": mean_episodes, "returns": summarise(scores.mean_returns)}
            if scores.mean_success is not None:
                mean_action["success"] = summarise(scores.mean_success)
            results[name]["mean_action"] = mean_action
    first = learners[first_name]
    if hasattr(family, "oracle_action") and hasattr(family, "rollout"):
        dtype = next(iter(first.params().values())).dtype
        oracle = oracle_returns(family, tasks, first.trajectories, first.horizon, dtype)
        results["oracle"] = {"returns": summarise(oracle.unsqueeze(1).expand(-1, steps + 1))}
    return results


def _paired(minuend: str, first: Scores, other: Scores) -> dict:
    """The first method's scores minus ``other``'s, task by task: returns, and success rates (of the sampled
    and of the mean-action episodes) where both report them."""
    paired = {"minuend": minuend, "returns": summarise(first.returns - other.returns)}
    if first.success is not None and other.success is not None:
        paired["success"] = summarise(first.success - other.success)
    if first.mean_success is not None and other.mean_success is not None:
        paired["mean_action_success"] = summarise(first.mean_success - other.mean_success)
    return paired


def format_table(results: dict) -> str:
    """Average return by inner steps, one row per method (mean ± 95% CI), then the paired differences, then
    the success rates in percent where the family reports them (Meta-World) and their paired differences,
    then the mean-action scores the same way."""
    steps = len(next(iter(results.values()))["returns"])
    paired = {name: result["paired"] for name, result in results.items() if "paired" in result}
    labelled = [(name, result["returns"], "") for name, result in results.items()]
    labelled += [(f"{p['minuend']} - {name}", p["returns"], "+") for name, p in paired.items()]
    labelled += _percent([(f"{name} success %", result.get("success")) for name, result in results.items()])
    labelled += _percent([(f"{p['minuend']} - {name} success %", p.get("success")) for name, p in paired.items()],
                         "+")
    means = {name: result["mean_action"] for name, result in results.items() if "mean_action" in result}
    labelled += [(f"{name} mean action", mean["returns"], "") for name, mean in means.items()]
    labelled += _percent([(f"{name} success % mean action", mean.get("success")) for name, mean in means.items()])
    labelled += _percent([(f"{p['minuend']} - {name} success % mean action", p.get("mean_action_success"))
                          for name, p in paired.items()], "+")
    width = max(12, *(len(label) + 1 for label, _, _ in labelled))
    rows = [f"{'method':<{width}}" + "".join(f"{f'{k} steps':>18}" for k in range(steps))]
    for label, returns, sign in labelled:
        rows.append(f"{label:<{width}}" + "".join(f"{r['mean']:>{sign}10.2f} ± {r['ci95']:<5.2f}" for r in returns))
    return "\n".join(rows)


def _percent(rates: list[tuple[str, list[dict] | None]], sign: str = "") -> list[tuple[str, list[dict], str]]:
    return [(label, [{k: 100 * r[k] for k in ("mean", "ci95")} for r in rate], sign) for label, rate in rates
            if rate is not None]
