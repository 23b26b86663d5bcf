"""Plain ``nn.Module`` models; any user module works with fastmaml as well."""

from fastmaml.models.conv4 import Conv4
from fastmaml.models.mlp import MLP
from fastmaml.models.resnet12 import ResNet12
from fastmaml.models.transformer import SequenceTransformer

__all__ = ["MLP", "Conv4", "ResNet12", "SequenceTransformer"]
