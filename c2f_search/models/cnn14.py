"""PANNs CNN14 (Kong et al. 2020) behind a time-pooling front end: Table 1's CNN baseline.

Six blocks of two 3x3 conv + BN + ReLU, 2x2 average pooling after the first five, then the mean over
frequency, max + mean over time, a 2048-wide FC and the classifier. The input is the fbank of the
phase, so the pooling front end (``avgpool``/``maxpool``, or ``fshift``) shortens the time axis by C
before the first conv, as Liu et al.'s simple pooling front ends do for CNN14. The network has no
position embedding and no patch: every weight keeps its shape across phases (a plain copy), and the
patch methods do not apply.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import Capability, Geometry
from .base import ModelFamily, register_model

WIDTHS = {"cnn14": (64, 128, 256, 512, 1024, 2048), "cnn14-tiny": (8, 16, 32, 64, 128, 256)}
POOLS = 5  # blocks followed by 2x2 pooling


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x, pool: bool):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, 2) if pool else x


class CNN14(nn.Module):
    def __init__(self, geometry: Geometry, num_classes: int, widths=WIDTHS["cnn14"]):
        super().__init__()
        self.bn0 = nn.BatchNorm1d(geometry.num_mel_bins)  # per mel bin, as PANNs
        chans = (1, *widths)
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(chans, chans[1:]))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        for fc in (self.fc1, self.head):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(x).transpose(1, 2).unsqueeze(1)  # (B, F, T) -> (B, 1, T, F), PANNs' layout
        for i, block in enumerate(self.blocks):
            x = F.dropout(block(x, pool=i < POOLS), 0.2, self.training)
        x = x.mean(3)  # over frequency
        x = x.amax(2) + x.mean(2)  # over time
        x = F.dropout(x, 0.5, self.training)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.head(x)


class CNN14Family(ModelFamily):
    # a CNN has no tokens: the granularity is the frames behind one step of the last block's map
    name, time_granularity, min_mel_bins = "cnn14", 2**POOLS, 2**POOLS
    provides = frozenset({Capability.SHORTER_INPUT})  # no patches to stretch, no tokens to drop


CNN14_FAMILY = CNN14Family()


def _make(name):
    def fn(geometry: Geometry, num_classes: int, **kw) -> CNN14:
        return CNN14(geometry, num_classes, widths=WIDTHS[name], **kw)

    fn.__doc__ = f"CNN14 with channels {WIDTHS[name]}."
    return fn


for _name in WIDTHS:
    register_model(_name, CNN14_FAMILY)(_make(_name))
