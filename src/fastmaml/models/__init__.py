"""Plain ``nn.Module`` models; any user module works with fastmaml as well."""

from fastmaml.models.conv4 import Conv4
from fastmaml.models.mlp import MLP

__all__ = ["MLP", "Conv4"]
