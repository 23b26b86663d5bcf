"""The kinds of run (supervised meta-learning, meta-RL, ...): one registry that the command line and
:func:`load` read, so no trainer knows another kind and a new kind is one line here.

A kind is a module with the functions the command line calls: ``resolve(recipe, overrides)``,
``load_config(run_dir)``, ``train(config, out, overwrite, progress)``, ``resume(run_dir, progress, device)``,
``evaluate_run(run_dir, tasks, steps, out, mean_episodes, iteration)``, ``plot_run(run_dir, out)``,
``summary(results)`` and ``load(run_dir, which)``. A recipe or a run folder's ``config.yaml`` names its kind
in a ``kind:`` key (absent: ``supervised``). Every kind trains in the one loop,
:func:`fastmaml.train.loop.run_loop`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

KINDS = {"supervised": "fastmaml.train.kind", "rl": "fastmaml.rl.kind"}


def named(values: Any, where: str) -> ModuleType:
    """The kind named by a recipe's or config's ``kind:`` key (``values``: its parsed mapping)."""
    name = values.get("kind", "supervised") if isinstance(values, dict) else "supervised"
    if name not in KINDS:
        raise ValueError(f"{where} has kind: {name!r}; use one of {', '.join(KINDS)} (or leave it out)")
    return importlib.import_module(KINDS[name])


def of_recipe(recipe: str | None) -> ModuleType:
    """The kind of a recipe (a built-in name or a YAML path); an unknown recipe is supervised, whose
    ``resolve`` then names the valid ones."""
    from fastmaml.train import config as cfg

    if recipe is None:
        return importlib.import_module(KINDS["supervised"])
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) and path.is_file():
        return named(cfg._parse_yaml(path.read_text(), recipe), recipe)
    if recipe in cfg.recipe_names():
        return named(cfg._parse_yaml(cfg.recipe_text(recipe), recipe), recipe)
    return importlib.import_module(KINDS["supervised"])


def of_run(run_dir: str | Path) -> ModuleType:
    """The kind of a run folder, from its ``config.yaml`` (a folder without one is left to the supervised
    kind, whose commands then say that it is not a run)."""
    from fastmaml.train import config as cfg

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return importlib.import_module(KINDS["supervised"])
    return named(cfg._parse_yaml(path.read_text(), str(path)), str(path))


def load(run_dir: str | Path, which: str | int = "best") -> Any:
    """The trained learner of a run folder, whatever its kind: for supervised runs the algorithm (e.g.
    ``MAML``, ready to ``adapt`` and ``predict``; ``which="best"`` takes the best meta-validation checkpoint
    when the run kept one, else the last), for meta-RL runs the policy's learner (``adapt`` and ``act``).
    ``which=N`` takes the checkpoint the run kept at iteration N (a run trained with ``keep_every``).

    Example:
        >>> from fastmaml.train import train
        >>> config = fm.TrainConfig(iterations=2, meta_batch_size=2, eval_tasks=4, baseline_iterations=0)
        >>> _ = train(config, "runs/sinusoid", progress=False)  # a tiny run (or `fastmaml train sinusoid`)
        >>> maml = fm.load("runs/sinusoid")
        >>> task = fm.Sinusoid().sample_tasks(1, torch.Generator().manual_seed(1))
        >>> params = maml.adapt(task.support_x[0], task.support_y[0])  # one task: no task dimension
        >>> maml.predict(params, task.query_x[0]).shape
        torch.Size([10, 1])
    """
    return of_run(run_dir).load(run_dir, which)
