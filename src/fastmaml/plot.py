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
        raise ImportError("plotting needs matplotlib: pip install 'fastmaml[plot]'") from None
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
        fig, curve = plt.subplots(1, 1, figsize=(6, 4))
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
    ax.plot(x, Sinusoid.evaluate(amplitude, phase, x.unsqueeze(0))[0], color="red", label="ground truth")
    ax.scatter(support_x, support_y, marker="^", color="purple", zorder=3, label=f"{config.data.shots} support points")
    for steps, style in ((0, ":"), (1, "--"), (10, "-")):
        params = algorithm.adapt(support_x, support_y, inner_steps=steps)
        with torch.no_grad():
            ax.plot(x, algorithm.predict(params, x), linestyle=style, color="tab:green",
                    label=f"{'pre-update' if steps == 0 else f'{steps} grad step' + ('s' if steps > 1 else '')}")
    ax.set_title(title)
    ax.set_ylim(-6, 6)
    ax.legend(loc="lower right", fontsize=8)
