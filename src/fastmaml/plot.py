"""Pictures of a run (needs the ``plot`` extra): the MAML paper's Figure-2 panel and the learning curve."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastmaml[plot]' "
                          "(in a checkout: pip install -e '.[plot]')") from None
    return plt


def plot_run(run_dir: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    """Write a PNG for the run in ``run_dir`` and return its path."""
    from fastmaml.train import config as cfg
    from fastmaml.train import run as runs

    run_dir = Path(run_dir)
    algorithm = runs.load(run_dir)
    config = cfg.load(run_dir / runs.CONFIG)
    plt = _pyplot()
    history = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines() if line.strip()]
    if config.data.name == "sinusoid":
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        sinusoid_panel(axes[0], algorithm, config, seed, "MAML")
        if (run_dir / runs.BASELINES).is_file():
            sinusoid_panel(axes[1], runs.baselines(run_dir)["pretrained"], config, seed, "pretrained")
        else:
            axes[1].set_visible(False)
        curve = axes[2]
    else:
        fig = plt.figure(figsize=(15, 8))
        grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.3))
        curve = fig.add_subplot(grid[0, 0])
        steps_ax = fig.add_subplot(grid[0, 1])
        if (run_dir / runs.EVAL).is_file():
            accuracy_by_step(steps_ax, json.loads((run_dir / runs.EVAL).read_text()))
        else:
            steps_ax.set_visible(False)
        task_panel(fig, grid[1, :], algorithm, config, seed)
    curve.plot([h["iteration"] for h in history], [h["loss"] for h in history], label="outer loss (train)")
    val = [(h["iteration"], h["val"]) for h in history if "val" in h]
    if val:
        twin = curve.twinx()
        twin.plot(*zip(*val), color="tab:green", label="validation score")
        twin.set_ylabel("validation score")
    curve.set_xlabel("iteration")
    curve.set_ylabel("outer loss")
    curve.set_yscale("log")
    curve.set_title("learning curve")
    out = Path(out) if out is not None else run_dir / "plot.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def sinusoid_panel(ax, algorithm, config, seed: int, title: str) -> None:
    """True curve, support points, and predictions before and after 1 and 10 inner steps (Figure 2)."""
    from fastmaml.tasks import Sinusoid

    tasks = Sinusoid(shots=config.data.shots)
    g = torch.Generator().manual_seed(seed)
    amplitude, phase = tasks.sample_functions(1, g)
    support_x = tasks.sample_points(1, config.data.shots, g)[0]  # (K, 1)
    support_y = Sinusoid.evaluate(amplitude, phase, support_x.unsqueeze(0))[0]
    x = torch.linspace(-5, 5, 200).unsqueeze(-1)
    ax.plot(x.numpy(), Sinusoid.evaluate(amplitude, phase, x.unsqueeze(0))[0].numpy(), color="red",
            label="ground truth")
    ax.scatter(support_x.numpy(), support_y.numpy(), marker="^", color="purple", zorder=3,
               label=f"{config.data.shots} support points")
    for steps, style in ((0, ":"), (1, "--"), (10, "-")):
        params = algorithm.adapt(support_x, support_y, inner_steps=steps)
        with torch.no_grad():
            ax.plot(x.numpy(), algorithm.predict(params, x).numpy(), linestyle=style, color="tab:green",
                    label=f"{'pre-update' if steps == 0 else f'{steps} grad step' + ('s' if steps > 1 else '')}")
    ax.set_title(title)
    ax.set_ylim(-6, 6)
    ax.legend(loc="lower right", fontsize=8)


def accuracy_by_step(ax, results: dict) -> None:
    """Meta-test accuracy (mean and 95% CI) after each inner step, from ``eval.json``."""
    for name, result in results.items():
        if "accuracy" not in result:
            continue
        means = [c["mean"] for c in result["accuracy"]]
        cis = [c["ci95"] for c in result["accuracy"]]
        ax.errorbar(range(len(means)), means, yerr=cis, capsize=3, marker="o", label=name)
    ax.set_xlabel("inner steps at test")
    ax.set_ylabel("query accuracy (%)")
    ax.set_title(f"meta-test accuracy ({next(iter(results.values()))['tasks']} tasks, 95% CI)")
    ax.legend()


def task_panel(fig, cell, algorithm, config, seed: int) -> None:
    """One meta-test task: support images with labels, query images with true / predicted labels."""
    from fastmaml.train.build import build_tasks, task_generator

    tasks = build_tasks(config, "test")
    batch = tasks.sample_tasks(1, task_generator(config, "test"))
    params = algorithm.adapt(batch.support_x[0], batch.support_y[0], inner_steps=config.eval_inner_steps)
    with torch.no_grad():
        predicted = algorithm.predict(params, batch.query_x[0]).argmax(-1)
    support = list(zip(batch.support_x[0], batch.support_y[0].tolist(), [None] * len(batch.support_y[0])))
    labels = batch.query_y[0]
    # two query examples of each class (the query set is grouped by class)
    shown = [i for c in range(config.data.ways) for i in (labels == c).nonzero().flatten()[:2].tolist()]
    query = [(batch.query_x[0, i], labels[i].item(), predicted[i].item()) for i in shown]
    items = support + query
    columns = min(len(items), 15)
    rows = (len(items) + columns - 1) // columns
    sub = cell.subgridspec(rows, columns)
    for i, (image, label, guess) in enumerate(items):
        ax = fig.add_subplot(sub[i // columns, i % columns])
        picture = image.permute(1, 2, 0).squeeze(-1)  # (H, W) or (H, W, C)
        ax.imshow(((picture - picture.min()) / (picture.max() - picture.min() + 1e-8)).numpy(), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        if guess is None:
            ax.set_title(f"support {label}", fontsize=8)
        else:
            ax.set_title(f"query {label}->{guess}", fontsize=8, color="green" if guess == label else "red")
