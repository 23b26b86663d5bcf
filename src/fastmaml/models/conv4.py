"""Conv-4: the four-block convolutional network of the MAML paper's image experiments."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class Conv4(nn.Module):
    """Four blocks of conv3x3 -> BatchNorm (batch statistics) -> ReLU, then a linear head.

    ``pool="stride"`` is the paper's Omniglot network: stride-2 convolutions, then a mean over the
    remaining spatial positions. ``pool="max"`` is the mini-ImageNet network: stride-1 convolutions each
    followed by 2x2 max-pooling, then the feature map is flattened.

    BatchNorm keeps no running statistics (``track_running_stats=False``): every forward normalises with
    the statistics of the examples it is given, as in the paper.

    Example:
        >>> Conv4(in_channels=1, ways=5)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        in_channels: int = 1,
        ways: int = 5,
        filters: int = 64,
        pool: Literal["stride", "max"] = "stride",
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if pool not in ("stride", "max"):
            raise ValueError(f"pool={pool!r}; use 'stride' or 'max'")
        self.pool = pool
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            stride = 2 if pool == "stride" else 1
            blocks += [
                nn.Conv2d(channels, filters, 3, stride=stride, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=False),
                nn.ReLU(),
            ]
            if pool == "max":
                blocks.append(nn.MaxPool2d(2))
            channels = filters
        self.features = nn.Sequential(*blocks)
        side = image_size
        for _ in range(4):
            side = (side + 1) // 2 if pool == "stride" else side // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for four poolings; use at least 16")
        self.head = nn.Linear(filters if pool == "stride" else filters * side * side, ways)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # (N, filters, side, side)
        h = h.mean(dim=(2, 3)) if self.pool == "stride" else torch.flatten(h, 1)
        return self.head(h)
