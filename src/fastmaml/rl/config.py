"""The meta-RL run configuration: a typed, frozen dataclass that ``kind: rl`` recipes resolve into.

Defaults are the MAML paper's 2D navigation (section 5.3) as cbfinn/maml_rl and pytorch-maml-rl run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmaml.rl.sampler import check_budget
from fastmaml.train import config as cfg

KIND = "rl"
OUTERS = ("trpo", "adam")
INNER_RULES = ("sgd", "momentum", "adam", "meta_sgd")


@dataclass(frozen=True)
class PolicyConfig:
    """The policy MLP: ``hidden`` sizes, ``activation`` (relu | tanh), initial action std (Gaussian), and the
    weights' ``init``: ``torch`` (nn.Linear's default) or ``glorot`` (Glorot-uniform weights, zero biases: the
    MAML paper's rllab policies)."""

    hidden: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    init_std: float = 1.0
    init: str = "torch"


@dataclass(frozen=True)
class RLConfig:
    """Everything a meta-RL run needs.

    ``env`` names the task family: ``navigation2d`` or ``package.module:Factory`` for a user's own
    (called with ``env_options``; it must have ``sample_tasks(n, generator)`` and ``make_env(task)``).
    ``inner_rule``: the core update rule of the inner step (``sgd``, the paper's vanilla policy gradient;
    ``momentum``, ``adam``, ``meta_sgd``), at ``inner_lr``. ``outer``: ``trpo`` (max_kl, cg_*, ls_*) or
    ``adam`` (outer_lr). ``baseline_iterations``: TRPO
    iterations of the "pretrained on the task mixture" baseline (0: none). ``eval_trajectories``: episodes
    per inner step at meta-test (0: ``trajectories``; the MAML paper trains its goal-velocity cheetah on 10
    and tests on 20). ``eval_mean_episodes``: at meta-test, also score each policy on this many episodes of
    its mean action before and after each inner step, episodes it never adapts on (Meta-World's protocol: 3;
    0: only the sampled episodes). ``budget``: what ``trajectories`` buys each task per inner step, that many
    episodes (``trajectories``) or ``trajectories`` x ``horizon`` environment steps in as many complete
    episodes as that takes (``steps``: maml_rl's sampler, which runs more episodes where they end early).
    """

    kind: str = KIND
    env: str = "navigation2d"
    env_options: dict[str, Any] = field(default_factory=dict)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    meta_batch_size: int = 20
    trajectories: int = 20
    horizon: int = 100
    budget: str = "trajectories"
    inner_lr: float = 0.1
    inner_steps: int = 1
    inner_rule: str = "sgd"
    first_order: bool = False
    outer: str = "trpo"
    outer_lr: float = 1e-3
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_ratio: float = 0.8
    ls_steps: int = 15
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    iterations: int = 500
    max_minutes: float = 0.0
    seed: int = 0
    execution: str = "auto"
    threads: int = 0  # 0: torch's default, or only the free cores when other jobs load the machine
    dtype: str = "float32"
    log_every: int = 10
    checkpoint_every: int = 50
    keep_every: int = 0  # keep the checkpoint of every keep_every-th iteration as snapshots/checkpoint-<N>.pt
    eval_tasks: int = 40
    eval_inner_steps: int = 3
    eval_trajectories: int = 0  # episodes per inner step at meta-test; 0: ``trajectories``
    eval_step_scale: float = 1.0  # the move of every meta-test step after the first, relative to the first's
    eval_mean_episodes: int = 0  # mean-action episodes scored per task and step at meta-test (Meta-World's: 3)
    baseline_iterations: int = 100

    @property
    def test_trajectories(self) -> int:
        """Episodes per inner step at meta-test: ``eval_trajectories``, or ``trajectories`` when it is 0."""
        return self.eval_trajectories or self.trajectories

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"kind={self.kind!r}; a meta-RL recipe has kind: {KIND}")
        for name in ("meta_batch_size", "trajectories", "horizon", "log_every", "eval_tasks", "cg_iters",
                     "ls_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; it must be >= 1")
        for name in ("inner_steps", "iterations", "checkpoint_every", "keep_every", "eval_inner_steps",
                     "baseline_iterations", "threads", "inner_lr", "cg_damping", "max_minutes", "eval_trajectories",
                     "eval_step_scale", "eval_mean_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; it must be >= 0")
        for name in ("max_kl", "outer_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}; it must be > 0")
        if not 0 < self.ls_ratio < 1:
            raise ValueError(f"ls_ratio={self.ls_ratio}; the backtracking factor must lie in (0, 1)")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"gamma={self.gamma}, gae_lambda={self.gae_lambda}; both must lie in [0, 1]")
        choices = {"outer": OUTERS, "inner_rule": INNER_RULES, "execution": ("auto", "vmap", "loop"),
                   "dtype": ("float32", "float64"), "policy.activation": ("relu", "tanh"),
                   "policy.init": ("torch", "glorot")}
        for name, valid in choices.items():
            value = getattr(self.policy, name[7:]) if name.startswith("policy.") else getattr(self, name)
            if value not in valid:
                raise ValueError(f"{name}={value!r}; use one of {', '.join(valid)}")
        check_budget(self.budget)


def _values(recipe: str) -> dict | None:
    """The recipe's mapping when ``recipe`` names a YAML recipe file or a built-in recipe, else None."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) and path.is_file():
        text = path.read_text()
    elif recipe in cfg.recipe_names():
        text = cfg.recipe_text(recipe)
    else:
        return None
    values = cfg._parse_yaml(text, recipe)
    return values if isinstance(values, dict) else None


def is_rl_recipe(recipe: str | None) -> bool:
    """Whether ``recipe`` (a name or a YAML path) is a meta-RL recipe (``kind: rl``)."""
    if recipe is None:
        return False
    values = _values(recipe)
    return values is not None and values.get("kind") == KIND


def is_rl_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a meta-RL run (its ``config.yaml`` has ``kind: rl``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return False
    values = cfg._parse_yaml(path.read_text(), str(path))
    return isinstance(values, dict) and values.get("kind") == KIND


def resolve(recipe: str, overrides: list[str] | None = None) -> RLConfig:
    """A meta-RL recipe with ``key=value`` overrides applied on top."""
    values = _values(recipe) or {}
    return cfg.from_dict(RLConfig, cfg.merge(values, cfg.parse_overrides(overrides or [])))


def load(path: Path) -> RLConfig:
    return cfg.from_dict(RLConfig, cfg._parse_yaml(Path(path).read_text(), str(path)))
