"""fastmaml: fast, exact gradient-based meta-learning (MAML and family) for any PyTorch module."""

from fastmaml import models
from fastmaml.algorithms import ANIL, FOMAML, IMAML, MAML, MAMLPlusPlus, MetaSGD, Reptile, build
from fastmaml.tasks import EpisodicTasks, Sinusoid, TaskBatch
from fastmaml.train import TrainConfig, evaluate, fit, load

__version__ = "0.2.0"
__all__ = [
    "ANIL", "FOMAML", "IMAML", "MAML", "MAMLPlusPlus", "MetaSGD", "Reptile", "build",
    "EpisodicTasks", "Sinusoid", "TaskBatch", "TrainConfig", "evaluate", "fit", "load", "models",
]
