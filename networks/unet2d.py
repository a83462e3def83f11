"""The "half U-Net" of Livne et al. 2019 (vessel segmentation in TOF-MRA), in 2D or 3D.

Half the filters of Ronneberger's U-Net (32/64/128/256/512), no batch norm, dropout between the two
convolutions of every block, nearest-neighbour upsampling (no transposed convolution) followed by
concatenation with the skip connection. At the paper widths in 2D with one input channel this has
7,846,081 parameters (the paper's ≈7.85 M), which also pins the upsampling choice: a 2×2 transposed
convolution would add ≈0.7 M.

The network returns LOGITS. The paper's final sigmoid is applied by the loss
(`monai.losses.DiceLoss(sigmoid=True)`) and at inference, because sigmoid-then-loss in fp16/bf16
saturates while the fused form stays numerically stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

PAPER_FEATURES: tuple[int, ...] = (32, 64, 128, 256, 512)


class _DoubleConv(nn.Sequential):
    """conv3×3 + ReLU → dropout → conv3×3 + ReLU, as in the authors' Keras blocks."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(
            Convolution(spatial_dims, in_ch, out_ch, kernel_size=3, act="RELU", norm=None,
                        dropout=dropout, adn_ordering="AD"),
            Convolution(spatial_dims, out_ch, out_ch, kernel_size=3, act="RELU", norm=None, adn_ordering="A"),
        )


class HalfUNet2D(nn.Module):
    """Livne et al.'s half U-Net; `spatial_dims=3` gives the same topology with 3D convolutions.

    Args:
        in_channels: image channels (1 for TOF-MRA).
        out_channels: logit channels (1 for binary vessel segmentation).
        features: filters per level, encoder top to bottleneck; `len(features) - 1` poolings.
        dropout: dropout probability between the two convolutions of each block (paper grid {0, 0.1}).
        spatial_dims: 2 (axial patches, the paper) or 3.

    Input spatial sizes must be divisible by `2 ** (len(features) - 1)`; anything else would silently
    drop rows at a pooling and break the skip concatenation, so it raises `ValueError` instead.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = PAPER_FEATURES,
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"HalfUNet2D: features needs at least 2 levels, got {features}")
        if any(f < 1 for f in features):
            raise ValueError(f"HalfUNet2D: features must be positive, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"HalfUNet2D: dropout must be in [0, 1), got {dropout}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"HalfUNet2D: spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"HalfUNet2D: channels must be positive, got in={in_channels} out={out_channels}")
        self.features = features
        self.spatial_dims = spatial_dims
        self.n_pool = len(features) - 1
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d

        self.encoders = nn.ModuleList()
        prev = in_channels
        for f in features:
            self.encoders.append(_DoubleConv(spatial_dims, prev, f, dropout))
            prev = f
        self.pool = pool(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for skip in reversed(features[:-1]):
            self.ups.append(UpSample(spatial_dims, prev, prev, scale_factor=2, mode="nontrainable",
                                     pre_conv=None, interp_mode="nearest", align_corners=None))
            self.decoders.append(_DoubleConv(spatial_dims, prev + skip, skip, dropout))
            prev = skip
        self.head = Convolution(spatial_dims, prev, out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"HalfUNet2D: expected a {self.spatial_dims + 2}-D input (N, C, spatial...), got shape {tuple(x.shape)}"
            )
        factor = 2**self.n_pool
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"HalfUNet2D: spatial size {tuple(x.shape[2:])} must be divisible by 2**{self.n_pool} = {factor}"
            )
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.n_pool:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
