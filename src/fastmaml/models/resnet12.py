"""ResNet-12: the residual backbone of few-shot learning (TADAM, MetaOptNet, MAML++ follow-ups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """Three conv3x3 -> BatchNorm -> LeakyReLU(0.1) (the last activation after the residual sum), a
    1x1 conv + BatchNorm shortcut, then 2x2 max-pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, track_running_stats=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, track_running_stats=False)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, track_running_stats=False)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, track_running_stats=False),
        )
        self.activation = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.bn1(self.conv1(x)))
        h = self.activation(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.pool(self.activation(h + self.shortcut(x)))  # (N, out, H/2, W/2)


class ResNet12(nn.Module):
    """Four residual blocks (64, 160, 320, 640 channels by default), global average pooling, linear head.

    BatchNorm keeps no running statistics (``track_running_stats=False``), as in :class:`Conv4`: every
    forward normalises with the statistics of the examples it is given, which is what MAML's
    transductive batch normalisation and fastmaml's exact functional BatchNorm expect. DropBlock, used
    by some ResNet-12 recipes, is left out.

    Example:
        >>> ResNet12(in_channels=3, ways=5, channels=(8, 8, 16, 16))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(self, in_channels: int = 3, ways: int = 5, channels: Sequence[int] = (64, 160, 320, 640)) -> None:
        super().__init__()
        if len(channels) != 4 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels={tuple(channels)}; pass four positive widths, e.g. (64, 160, 320, 640)")
        widths = [in_channels, *map(int, channels)]
        self.features = nn.Sequential(*(ResidualBlock(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], ways)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] < 16 or x.shape[-2] < 16:
            raise ValueError(f"ResNet12 needs images of at least 16x16 (four 2x poolings); got {tuple(x.shape[-2:])}")
        h = self.features(x)  # (N, channels[-1], H/16, W/16)
        return self.head(torch.flatten(h.mean(dim=(2, 3)), 1))
