"""Meta-training, evaluation, run folders and checkpoints."""

from fastmaml.kinds import load
from fastmaml.train.api import fit
from fastmaml.train.config import TrainConfig
from fastmaml.train.evaluate import evaluate
from fastmaml.train.run import evaluate_run, train

__all__ = ["TrainConfig", "evaluate", "evaluate_run", "fit", "load", "train"]
