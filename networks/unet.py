"""One U-Net family for 2D and 3D vessel segmentation: the 2D papers' half U-Net and the 3D paper's U-Net.

Both papers use a plain Ronneberger-style U-Net (two 3×3(×3) convolutions per level, 2× max-pooling, nearest
upsampling + skip concatenation, 1×1(×1) head) and differ only in switches, so they are one class here:

| switch          | half U-Net, Livne et al. 2019 (`HalfUNet2D`) | 3D U-Net, Hilbert et al. 2020 (`model/unet3d.yaml`) |
|-----------------|-------------------------|-----------------------------------------------------|
| `spatial_dims`  | 2                       | 3                                                   |
| `features`      | 32/64/128/256/512       | 32/64/128/256 (4 levels, 3 poolings)                |
| `norm`          | None                    | "batch"                                             |
| `adn_ordering`  | "AND" (no N: ReLU→drop) | "AND": conv → ReLU → BN → dropout → conv → ReLU → BN |
| `input_norm`    | False                   | True (a BatchNorm on the input)                     |
| `bottleneck_fc` | 0                       | 2 (1×1×1 conv + ReLU "fully connected" layers)      |

The 3D column is the Hilbert/BRAVE-NET `Vessel_segmentation` code's description (`../shared/notes/3d-paper.md` A3,
Keras `activation=` inside the conv, hence ReLU before BN); its parameter count, 5,970,435, is pinned in the tests.
The network returns LOGITS (sigmoid in the loss and at inference: stable under fp16/bf16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

HILBERT_FEATURES: tuple[int, ...] = (32, 64, 128, 256)


def _conv(spatial_dims: int, in_ch: int, out_ch: int, ordering: str, norm: str | None,
          dropout: float | None) -> Convolution:
    """A 3×3(×3) conv followed by the letters of `ordering` whose layer exists (MONAI refuses absent ones)."""
    present = {"A": True, "N": norm is not None, "D": dropout is not None}
    return Convolution(spatial_dims, in_ch, out_ch, kernel_size=3, act="RELU", norm=norm, dropout=dropout,
                       adn_ordering="".join(c for c in ordering if present[c]))


class _DoubleConv(nn.Sequential):
    """conv → (act, norm, dropout in `ordering`) → conv → (act, norm); dropout only between the convolutions."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, dropout: float, norm: str | None,
                 ordering: str) -> None:
        super().__init__(
            _conv(spatial_dims, in_ch, out_ch, ordering, norm, dropout),
            _conv(spatial_dims, out_ch, out_ch, ordering.replace("D", ""), norm, None),
        )


class UNet(nn.Module):
    """U-Net in 2D or 3D with the switches of the table in the module docstring.

    Args:
        in_channels: image channels (1 for TOF-MRA).
        out_channels: logit channels (1 for binary vessel segmentation).
        features: filters per level, encoder top to bottleneck; `len(features) - 1` poolings.
        dropout: dropout probability between the two convolutions of each block.
        spatial_dims: 2 (axial patches) or 3 (3D patches).
        norm: None or a MONAI norm name ("batch", "instance", …) after each convolution.
        adn_ordering: order of activation (A), norm (N) and dropout (D) after the first conv of a block; the
            second conv uses it without D. Letters whose layer is absent are skipped.
        input_norm: a BatchNorm over the input channels before the first block.
        bottleneck_fc: 1×1(×1) conv + ReLU layers (width `features[-1]`) after the bottom block.

    Input spatial sizes must be divisible by `2 ** (len(features) - 1)`; anything else would silently
    drop rows at a pooling and break the skip concatenation, so it raises `ValueError` instead.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = HILBERT_FEATURES,
        dropout: float = 0.0,
        spatial_dims: int = 3,
        norm: str | None = None,
        adn_ordering: str = "AND",
        input_norm: bool = False,
        bottleneck_fc: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"{name}: features needs at least 2 levels, got {features}")
        if any(f < 1 for f in features):
            raise ValueError(f"{name}: features must be positive, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{name}: channels must be positive, got in={in_channels} out={out_channels}")
        if sorted(adn_ordering.upper()) != ["A", "D", "N"]:
            raise ValueError(f"{name}: adn_ordering must order the letters A, N, D once each, got {adn_ordering!r}")
        if bottleneck_fc < 0:
            raise ValueError(f"{name}: bottleneck_fc must be >= 0, got {bottleneck_fc}")
        self.features = features
        self.spatial_dims = spatial_dims
        self.n_pool = len(features) - 1
        ordering = adn_ordering.upper()
        block = lambda i, o: _DoubleConv(spatial_dims, i, o, dropout, norm, ordering)  # noqa: E731

        # Identity when off: no parameters, so the half U-Net's state-dict keys stay as they were.
        self.input_norm = (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(in_channels) if input_norm \
            else nn.Identity()
        self.encoders = nn.ModuleList()
        prev = in_channels
        for f in features:
            self.encoders.append(block(prev, f))
            prev = f
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.bottleneck = nn.Sequential(*(Convolution(spatial_dims, prev, prev, kernel_size=1, act="RELU",
                                                      adn_ordering="A") for _ in range(bottleneck_fc)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for skip in reversed(features[:-1]):
            self.ups.append(UpSample(spatial_dims, prev, prev, scale_factor=2, mode="nontrainable",
                                     pre_conv=None, interp_mode="nearest", align_corners=None))
            self.decoders.append(block(prev + skip, skip))
            prev = skip
        self.head = Convolution(spatial_dims, prev, out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"{name}: expected a {self.spatial_dims + 2}-D input (N, C, spatial...), got shape "
                             f"{tuple(x.shape)}")
        factor = 2**self.n_pool
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"{name}: spatial size {tuple(x.shape[2:])} must be divisible by 2**{self.n_pool} = "
                             f"{factor}")
        x = self.input_norm(x)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.n_pool:
                skips.append(x)
                x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted, as Keras' 'trainable')."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
