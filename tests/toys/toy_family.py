"""A model family defined outside the package: a tiny net with a learned per-time-token embedding
(like a position embedding) that provides a shorter time axis, and nothing else."""

import torch
import torch.nn as nn

from c2f_search import Geometry, ModelFamily, register_model
from c2f_search.geometry import Capability
from c2f_search.models.layers import resample_grid_embed


class ToyNet(nn.Module):
    def __init__(self, geometry: Geometry, num_classes: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, kernel_size=(geometry.num_mel_bins, 8), stride=(1, 8))
        self.time_embed = nn.Parameter(torch.randn(1, width, 1, geometry.frames // 8) * 0.1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.conv(x.unsqueeze(1)) + self.time_embed
        return self.head(h.mean((2, 3)))


class ToyFamily(ModelFamily):
    name, time_granularity = "toy", 8
    provides = frozenset({Capability.SHORTER_INPUT})

    def adapt_state_dict(self, sd, old, new, method):
        emb = sd["time_embed"]  # (1, W, 1, t): resample along time like a position embedding
        sd["time_embed"] = (
            resample_grid_embed(emb.flatten(2).transpose(1, 2), (1, new.time_embed.shape[-1]), (1, emb.shape[-1]), 0)
            .transpose(1, 2)
            .reshape(new.time_embed.shape)
        )
        return sd


register_model("toy-net", ToyFamily())(lambda geometry, num_classes, **kw: ToyNet(geometry, num_classes, **kw))
