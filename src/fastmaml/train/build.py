"""From a TrainConfig to the objects of a run: task distributions, model, algorithm, optimizer."""

from __future__ import annotations

import typing
from collections.abc import Iterable

import torch
from torch import nn

from fastmaml.tasks import Sinusoid, TokenSequences
from fastmaml.train.config import TrainConfig

SPLITS = ("train", "val", "test")
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
# Task streams are seeded apart so meta-test tasks never coincide with meta-train ones.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def build_tasks(config: TrainConfig, split: str):
    """The task distribution of one split (an object with ``sample_tasks(tasks, generator)``)."""
    data = config.data
    query_shots = data.query_shots
    if split != "train" and data.eval_query_shots is not None:
        query_shots = data.eval_query_shots
    if data.name == "sinusoid":
        return Sinusoid(shots=data.shots, query_shots=query_shots)
    if data.name == "sequence":
        return TokenSequences(ways=data.ways, shots=data.shots, query_shots=query_shots)
    from fastmaml.data import episodic_tasks

    if data.root is None:
        raise ValueError(f"data.name={data.name} needs the data set's folder; pass data.root=PATH")
    return episodic_tasks(
        data.name, data.root, split, ways=data.ways, shots=data.shots, query_shots=query_shots,
        image_size=data.image_size, rotations=data.rotations and split == "train", cache_dir=data.cache_dir,
        split_scheme=data.split_scheme,
    )


def task_generator(config: TrainConfig, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed + SPLIT_SEED_OFFSET[split])


def model_args(config: TrainConfig, tasks) -> dict:
    """What the model's shape depends on beyond the config (saved with checkpoints for ``fm.load``)."""
    if config.data.name == "sinusoid":
        return {}
    if config.data.name == "sequence":
        return {"vocab": tasks.vocab}
    return {"channels": tasks.channels, "image_size": tasks.image_size}


def build_model(config: TrainConfig, args: dict) -> nn.Module:
    from fastmaml import models

    spec = config.model
    torch.manual_seed(config.seed)
    if (spec.name == "transformer") != (config.data.name == "sequence"):
        raise ValueError(f"model.name={spec.name} does not take data.name={config.data.name}; "
                         "use model.name=transformer exactly for data.name=sequence")
    if spec.name == "transformer":
        return models.SequenceTransformer(args["vocab"], config.data.ways)
    if spec.name == "mlp":
        if config.data.name != "sinusoid":
            raise ValueError("model.name=mlp takes vector inputs; use model.name=conv4 or resnet12 for images")
        return models.MLP([1, *spec.hidden, 1])
    if config.data.name == "sinusoid":
        raise ValueError(f"model.name={spec.name} takes images; use model.name=mlp for data.name=sinusoid")
    if spec.name == "conv4":
        pool = typing.cast(typing.Literal["stride", "max"], spec.pool)  # checked by Conv4
        return models.Conv4(args["channels"], config.data.ways, spec.filters, pool, args["image_size"])
    if spec.name == "resnet12":
        return models.ResNet12(args["channels"], config.data.ways)
    raise ValueError(f"model.name={spec.name!r}; use one of mlp, conv4, resnet12, transformer")


def build_algorithm(config: TrainConfig, model: nn.Module) -> nn.Module:
    from fastmaml.algorithms import build

    # compile: None (the default) lets the library decide ("auto": compile once it pays for itself)
    return build(
        config.algorithm, model, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
        first_order=config.first_order, execution=config.execution, compile=config.compile,
        **config.algorithm_options,
    )


def build_optimizer(config: TrainConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[config.optimizer]
    if config.optimizer == "adam":
        return cls(parameters, lr=config.outer_lr)
    return cls(parameters, lr=config.outer_lr, momentum=config.momentum)


def build_scheduler(config: TrainConfig, algorithm: nn.Module, optimizer: torch.optim.Optimizer):
    """The outer learning-rate schedule, stepped once per outer step: the algorithm's own (MAML++'s
    cosine annealing) or ``lr_schedule=cosine``, which anneals ``outer_lr`` to 0 over ``iterations``."""
    scheduler = getattr(algorithm, "scheduler", None)
    own = scheduler(optimizer, config.iterations) if scheduler is not None else None
    if config.lr_schedule == "constant":
        return own
    if own is not None:
        raise ValueError(f"algorithm={config.algorithm} already anneals the outer learning rate; "
                         "drop lr_schedule=cosine or switch the algorithm's own schedule off")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.iterations, 1))
