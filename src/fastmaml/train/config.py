"""Typed, frozen run configuration; YAML recipes and ``key=value`` overrides resolve into it."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastmaml._text import with_article


@dataclass(frozen=True)
class DataConfig:
    """Where tasks come from. ``name``: sinusoid | sequence | omniglot | miniimagenet | folder.

    ``query_shots`` query examples per class train the model; meta-val and meta-test tasks have
    ``eval_query_shots`` (default: ``query_shots``), so a recipe can train on the paper's small query
    sets and still score every test task on many images.
    """

    name: str = "sinusoid"
    root: str | None = None
    ways: int = 5
    shots: int = 10
    query_shots: int = 10
    eval_query_shots: int | None = None
    image_size: int | None = None
    rotations: bool = False
    split_scheme: str = "maml"
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The network. ``name``: mlp | conv4 | resnet12 | transformer."""

    name: str = "mlp"
    hidden: tuple[int, ...] = (40, 40)
    filters: int = 64
    pool: str = "stride"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; the defaults are the MAML paper's sinusoid settings.

    Example:
        >>> config = TrainConfig(data=DataConfig(shots=5), inner_steps=5, iterations=100)
        >>> config.data.name, config.data.shots, config.meta_batch_size
        ('sinusoid', 5, 25)
        >>> TrainConfig(meta_batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: meta_batch_size=0; it must be >= 1
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: str = "maml"
    algorithm_options: dict[str, Any] = field(default_factory=dict)
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: int = 10
    first_order: bool | None = None
    outer_lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": anneal outer_lr to 0 over `iterations`
    optimizer: str = "adam"
    momentum: float = 0.0
    meta_batch_size: int = 25
    iterations: int = 70_000
    max_minutes: float = 0.0
    seed: int = 0
    execution: str = "auto"
    compile: bool | None = None  # None: the library decides (fastmaml.core.compiled, compile="auto")
    threads: int = 0  # 0: torch's default, or only the free cores when other jobs load the machine
    device: str = "auto"  # the GPU when torch sees one, else the CPU (fastmaml.train.distributed.Context.device)
    dtype: str = "float32"
    log_every: int = 100
    tensorboard: bool = False  # also write the logged scalars as TensorBoard events in RUN_DIR/tensorboard/
    val_every: int = 0
    val_tasks: int = 100
    eval_tasks: int = 600
    checkpoint_every: int = 0
    keep_every: int = 0  # keep the checkpoint of every keep_every-th iteration as snapshots/checkpoint-<N>.pt
    baseline_iterations: int = 5_000

    def __post_init__(self) -> None:
        positive = ("meta_batch_size", "eval_tasks", "val_tasks", "log_every")
        non_negative = ("inner_steps", "eval_inner_steps", "iterations", "threads", "val_every",
                        "checkpoint_every", "keep_every", "baseline_iterations", "inner_lr", "momentum", "max_minutes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; it must be >= 1")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; it must be >= 0")
        if not self.outer_lr > 0:
            raise ValueError(f"outer_lr={self.outer_lr}; it must be > 0")
        choices = {"optimizer": ("adam", "sgd", "rmsprop"), "execution": ("auto", "vmap", "loop"),
                   "dtype": ("float32", "float64"), "lr_schedule": ("constant", "cosine")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}; use one of {', '.join(valid)}")
        for name in ("ways", "shots", "query_shots", "eval_query_shots"):
            if getattr(self.data, name) is not None and getattr(self.data, name) < 1:
                raise ValueError(f"data.{name}={getattr(self.data, name)}; it must be >= 1")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from nested ``values``, checking every key and type."""
    if not isinstance(values, dict):
        if prefix:
            raise ValueError(f"{prefix.rstrip('.')} must be a mapping of keys to values, not {values!r}; give its "
                             f"keys, e.g. {prefix}KEY=VALUE")
        raise ValueError(f"the config must be a mapping of keys to values, not {values!r}; write one key: value "
                         "per line")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            valid = ", ".join(prefix + k for k in fields)
            raise ValueError(f"unknown config key {prefix}{key!r}{hint}; valid keys: {valid}")
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(typing.cast(type, hint), value or {}, name + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(hint, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(args[0], v, name) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, not {value!r}; give its keys, e.g. {name}.KEY=VALUE")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    spelled = " (true or false)" if hint is bool else ""
    raise ValueError(f"{name}={value!r} is not a valid {hint.__name__}; give {with_article(hint.__name__)}{spelled}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["inner_lr=0.1", "data.ways=20"]`` -> nested dict; values are read as YAML scalars/lists."""
    import yaml

    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value; write e.g. inner_lr=0.1")
        value = yaml.safe_load(raw) if raw else None
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} sets a key inside {part!r}, which another override gave a "
                                 f"value; drop one of the two")
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fastmaml.recipes").iterdir() if p.name.endswith(".yaml"))


def recipe_text(name: str) -> str:
    if name not in recipe_names():
        close = difflib.get_close_matches(name, recipe_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown recipe {name!r}{hint}; valid recipes: {', '.join(recipe_names())}")
    return resources.files("fastmaml.recipes").joinpath(name + ".yaml").read_text()


def recipe_summary(name: str) -> str:
    """The first sentence of a recipe's opening comment, whole, however many lines it spans."""
    lines = []
    for line in recipe_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    # a sentence ends at a full stop before a space or the end: "section 5.3" and "fastmaml.tasks" do not end one
    end = re.search(r"\.(\s|$)", text)
    return text[: end.start() + 1] if end else text


def resolve(recipe: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe (name or path to a YAML file), with ``key=value`` overrides applied on top."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if recipe.endswith((".yaml", ".yml")) and not path.is_file():
            raise FileNotFoundError(f"no recipe file at {recipe}; check the path, or name a built-in recipe "
                                    "(list them: fastmaml recipes)")
        text = path.read_text() if recipe.endswith((".yaml", ".yml")) and path.is_file() else recipe_text(recipe)
        values = _parse_yaml(text, recipe)
        if not isinstance(values, dict):
            raise ValueError(f"{recipe} must be a mapping of config keys to values, not "
                             f"{with_article(type(values).__name__)}; write one key: value per line, e.g. "
                             "inner_lr: 0.01")
    return from_dict(TrainConfig, merge(values, parse_overrides(overrides or [])))


def save(config: TrainConfig, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def load(path: Path) -> TrainConfig:
    return from_dict(TrainConfig, _parse_yaml(path.read_text(), str(path)))


def _parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{where} is not valid YAML ({first}); fix the file") from None
