"""HTS-AT (Chen et al. 2022) on timm's SwinTransformer, with its folding of time into the image and
its token-semantic head.

Folding: a (F mel, T frames) spectrogram is cut into R = 4 chunks of T / R frames, stacked along
frequency into an (R F) x (T / R) image (64 mel x 1024 frames -> 256 x 256, as HTS-AT). HTS-AT first
stretches every input to 1024 frames; here the image follows the input, so a compressed phase really
has fewer tokens (512 frames -> 256 x 128). Swin: patch 4, embed 96, depths [2, 2, 6, 2], heads
[4, 8, 16, 32], window 8, no absolute position embedding. Head: the last feature map is unfolded
back to (F', R T') and a Conv2d(768, classes, (F', 3)) gives per-frame logits, averaged over time.

Between phases only two kinds of weight depend on the geometry: a stretched patch kernel (patch
methods; moved like AST's) and the relative-position tables of the stages whose window is clipped to
a narrower grid (timm clips a window to the grid); those are resampled with timm's
``resize_rel_pos_bias_table``, the function its own ``set_window_size`` uses.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..geometry import Capability, Geometry
from .base import DEPTH, DROP_PATH, ModelFamily, register_model

PATCH, FREQ_RATIO = 4, 4
TABLE = "relative_position_bias_table"


class HTSAT(nn.Module):
    def __init__(
        self,
        geometry: Geometry,
        num_classes: int,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(4, 8, 16, 32),
        window_size=8,
        drop_path_rate=0.1,
        depth: int | None = None,
    ):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        F, T, k, R = geometry.num_mel_bins, geometry.frames, geometry.time_stretch, FREQ_RATIO
        if depth is not None:  # --depth: blocks in every stage (small models for tests and CPUs)
            depths = (depth,) * len(depths)
        shrink = PATCH * 2 ** (len(depths) - 1)  # image pixels per token of the last stage
        if F % shrink:
            raise ConfigError(
                "num_mel_bins",
                f"{F} mel bins do not fold into whole tokens of the last stage; "
                f"use a multiple of {shrink} (HTS-AT uses 64)",
            )
        self.bn0 = nn.BatchNorm1d(F)  # HTS-AT normalises each mel bin first
        self.swin = SwinTransformer(
            img_size=(F * R, T // R),
            patch_size=(PATCH, PATCH * k),
            in_chans=1,
            num_classes=0,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            drop_path_rate=drop_path_rate,
        )
        rows = F // shrink  # last-stage frequency rows per chunk: the head's kernel height
        self.head = nn.Conv2d(self.swin.num_features, num_classes, kernel_size=(rows, 3), padding=(0, 1))

    @property
    def token_grid(self) -> tuple[int, int]:
        return tuple(self.swin.patch_embed.grid_size)

    @staticmethod
    def fold(x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) -> (B, 1, R F, T / R): R time chunks stacked along frequency (HTS-AT's reshape_wav2img)."""
        B, F, T = x.shape
        return x.reshape(B, F, FREQ_RATIO, T // FREQ_RATIO).permute(0, 2, 1, 3).reshape(B, 1, FREQ_RATIO * F, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.swin.forward_features(self.fold(self.bn0(x)))  # (B, H', W', C), normed
        B, H, W, C = h.shape
        R = FREQ_RATIO
        h = h.permute(0, 3, 1, 2).reshape(B, C, R, H // R, W)  # unfold the chunks back into time
        h = h.permute(0, 1, 3, 2, 4).reshape(B, C, H // R, R * W)
        return self.head(h).flatten(2).mean(-1)  # per-frame logits, averaged over time


def _windows(model: HTSAT) -> dict[str, tuple[int, int]]:
    return {name: tuple(m.window_size) for name, m in model.named_modules() if hasattr(m, TABLE)}


class HTSATFamily(ModelFamily):
    name = "htsat"
    provides = frozenset({Capability.SHORTER_INPUT, Capability.STRETCHED_PATCH})  # window attention needs every token
    settings = (DEPTH, DROP_PATH)

    def __init__(self, stages: int):
        # frames per time token of the last stage, at C = 1: R chunks x patch x the stages' halvings
        self.time_granularity = FREQ_RATIO * PATCH * 2 ** (stages - 1)
        self.min_mel_bins = PATCH * 2 ** (stages - 1)  # fewer would leave no frequency row in the last stage

    def adapt_state_dict(self, sd, old, new, method):
        import warnings

        from timm.layers import resize_rel_pos_bias_table

        before, after = _windows(old), _windows(new)
        for name, win in after.items():
            if before[name] != win:
                key = f"{name}.{TABLE}"
                with warnings.catch_warnings():  # timm's interpolator warns about its own indexing
                    warnings.simplefilter("ignore", UserWarning)
                    sd[key] = resize_rel_pos_bias_table(
                        sd[key],
                        new_window_size=win,
                        old_window_size=before[name],
                        new_bias_shape=tuple(getattr(new.get_submodule(name), TABLE).shape),
                    )
        key = "swin.patch_embed.proj.weight"  # resized only where the kernel's shape changes
        size = new.swin.patch_embed.proj.weight.shape[-2:]
        sd[key] = method.resize_kernel(sd[key], size)
        return sd


@register_model("htsat", HTSATFamily(stages=4))
def htsat(geometry: Geometry, num_classes: int, **kw) -> HTSAT:
    """HTS-AT as published: embed 96, depths [2, 2, 6, 2], heads [4, 8, 16, 32], window 8."""
    return HTSAT(geometry, num_classes, **kw)


@register_model("htsat-tiny", HTSATFamily(stages=2))
def htsat_tiny(geometry: Geometry, num_classes: int, **kw) -> HTSAT:
    """A two-stage HTS-AT (embed 32, depths [2, 2], heads [1, 2], window 8) for tests and CPUs."""
    return HTSAT(geometry, num_classes, embed_dim=32, depths=(2, 2), num_heads=(1, 2), **{"drop_path_rate": 0.0, **kw})
