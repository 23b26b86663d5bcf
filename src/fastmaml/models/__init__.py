"""Plain ``nn.Module`` models; any user module works with fastmaml as well.

Example:
    >>> maml = fm.MAML(fm.models.Conv4(in_channels=1, ways=5), inner_lr=0.4)  # the paper's Omniglot network
    >>> own = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    >>> maml = fm.MAML(own, inner_lr=0.01)  # a module of your own, unchanged
"""

from fastmaml.models.conv4 import Conv4
from fastmaml.models.mlp import MLP
from fastmaml.models.resnet12 import ResNet12
from fastmaml.models.transformer import SequenceTransformer

__all__ = ["MLP", "Conv4", "ResNet12", "SequenceTransformer"]
