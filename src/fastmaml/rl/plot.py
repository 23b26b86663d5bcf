"""Pictures of a meta-RL run (the ``plot`` extra): 2D-navigation trajectories before and after adaptation
(the MAML paper's Figure 4), average return against inner steps, and the learning curve; for a family whose
episodes report success (Meta-World's), the success rate against inner steps and over meta-training too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fastmaml.core.params import Params
from fastmaml.plot import _pyplot
from fastmaml.rl.learner import MetaRL


def mean_rollout(learner: MetaRL, params: Params, env, seed: int = 0) -> np.ndarray:
    """Observations along one episode of the policy's mean actions: (steps + 1, obs_dim)."""
    obs, _ = env.reset(seed=seed)
    path = [np.asarray(obs, dtype=np.float64)]
    for _ in range(getattr(env, "horizon", 100)):
        obs, _, terminated, truncated, _ = env.step(learner.act(params, obs))
        path.append(np.asarray(obs, dtype=np.float64))
        if terminated or truncated:
            break
    return np.stack(path)


def trajectories_panel(ax, learner: MetaRL, goals: list[tuple[float, float]], steps: int, seed: int,
                       family=None) -> None:
    """Figure 4: for each goal, the mean-action path before adaptation and after ``steps`` inner steps, in
    ``family``'s environments (the run's, with its action scale; default: ``Navigation2DTasks()``)."""
    from fastmaml.rl.envs import Navigation2DTasks

    family = family if family is not None else Navigation2DTasks()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for goal, color in zip(goals, colors):
        env = family.make_env({"goal": goal})
        before = mean_rollout(learner, learner.adapt(env, inner_steps=0), env)
        adapted = learner.adapt(env, inner_steps=steps, generator=torch.Generator().manual_seed(seed))
        after = mean_rollout(learner, adapted, env)
        ax.plot(before[:, 0], before[:, 1], ":", color=color, alpha=0.7)
        ax.plot(after[:, 0], after[:, 1], "-", color=color)
        ax.plot(*goal, "*", color=color, markersize=14)
    ax.plot([], [], "k:", label="pre-update")
    ax.plot([], [], "k-", label=f"{steps} gradient step{'s' if steps != 1 else ''}")
    ax.plot(0, 0, "ko", markersize=4)
    ax.set(title="2D navigation: mean-action paths (stars: goals)", xlim=(-0.6, 0.6), ylim=(-0.6, 0.6))
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8)


def steps_panel(ax, results: dict) -> None:
    for name, result in results.items():
        rows = result["returns"]
        k = [r["steps"] for r in rows]
        mean, ci = np.array([r["mean"] for r in rows]), np.array([r["ci95"] for r in rows])
        ax.errorbar(k, mean, yerr=ci, marker="o", capsize=3, label=name, linestyle="--" if name == "oracle" else "-")
    ax.set(title="meta-test: average return (95% CI)", xlabel="inner gradient steps", ylabel="average return")
    ax.set_xticks(k)
    ax.legend(fontsize=8)


def success_panel(ax, results: dict) -> None:
    """Success rate (%) against inner steps, for families that report success: of the mean-action episodes
    where the evaluation scored them (Meta-World's protocol), else of the sampled ones."""
    protocol = any("success" in result.get("mean_action", {}) for result in results.values())
    for name, result in results.items():
        rows = result.get("mean_action", {}).get("success") if protocol else result.get("success")
        if not rows:
            continue
        k = [r["steps"] for r in rows]
        ax.errorbar(k, [100 * r["mean"] for r in rows], yerr=[100 * r["ci95"] for r in rows], marker="o",
                    capsize=3, label=name)
        ax.set_xticks(k)
    episodes = "mean-action episodes" if protocol else "sampled episodes"
    ax.set(title=f"meta-test: success rate, {episodes} (95% CI)", xlabel="inner gradient steps",
           ylabel="success rate (%)", ylim=(-2, 102))
    ax.legend(fontsize=8)


def success_curve_panel(ax, history: list[dict]) -> None:
    rows = [r for r in history if "success_after" in r]
    it = [r["iteration"] for r in rows]
    ax.plot(it, [100 * r["success_before"] for r in rows], label="before adaptation", alpha=0.8)
    ax.plot(it, [100 * r["success_after"] for r in rows], label="after adaptation", alpha=0.8)
    ax.set(title="meta-training: success", xlabel="meta-iteration", ylabel="success rate (%, training tasks)",
           ylim=(-2, 102))
    ax.legend(fontsize=8)


def curve_panel(ax, history: list[dict]) -> None:
    it = [r["iteration"] for r in history]
    ax.plot(it, [r["return_before"] for r in history], label="before adaptation", alpha=0.8)
    ax.plot(it, [r["return_after"] for r in history], label="after adaptation", alpha=0.8)
    ax.set(title="meta-training", xlabel="meta-iteration", ylabel="average return (training tasks)")
    ax.legend(fontsize=8)


def plot_run(run_dir: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    """Write the run's PNG (trajectories for navigation2d, return by steps, learning curve, and success by steps
    and over training where the family reports it); return its path."""
    from fastmaml.rl import config as rlcfg
    from fastmaml.rl import train as runs
    from fastmaml.train.folder import EVAL, METRICS

    run_dir = Path(run_dir)
    learner = runs.load(run_dir)
    config = rlcfg.load(run_dir / runs.CONFIG)
    plt = _pyplot()
    eval_path = run_dir / EVAL
    results = json.loads(eval_path.read_text()) if eval_path.is_file() else runs.evaluate_run(run_dir)
    history = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    navigation = config.env == "navigation2d"  # the only family whose behaviour draws as a path
    success = any("success" in result for result in results.values())  # a family that reports it (Meta-World)
    panels = 2 + navigation + 2 * success
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels - (1 if navigation else 0), 5), squeeze=False)
    axes = list(axes[0])
    if navigation:
        family = runs.build_family(config)
        test_stream = torch.Generator().manual_seed(config.seed + runs.TEST_STREAM)  # meta-test goals
        goals = [t["goal"] for t in family.sample_tasks(3, test_stream)]
        trajectories_panel(axes.pop(0), learner, goals, 1, seed, family)
    steps_panel(axes.pop(0), results)
    if success:
        success_panel(axes.pop(0), results)
    curve_panel(axes.pop(0), history)
    if success:
        success_curve_panel(axes.pop(0), history)
    fig.tight_layout()
    path = Path(out) if out is not None else run_dir / "plot.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
