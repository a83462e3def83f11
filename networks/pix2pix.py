"""pix2pix and temp-pix2pix of the thesis' perfusion chapter (ch. 7, SPEC §3.4): DSC-MRI frames → one map.

Rewritten from the authors' description and `model.py` (notes/perfusion.md B2); the parameter counts at the
authors' README settings equal their code's (tests/test_pix2pix_networks.py, meta device):

- `UnetGenerator(80 → 1, ngf 128, 6 downs, upsampling)`, "pix2pix": 85,442,945;
- `TemporalUnetGenerator(80 frames, ngf 128, unet_ngf 16, 6 downs, upsampling)`, "temp-pix2pix": 12,750,001;
- `PatchDiscriminator(81, ndf 64, n_layers 2)`: 743,233, a 30×30 logit map at 128².

The U-Net is pix2pix's recursive skip-connection block (Isola et al. 2017). temp-pix2pix first reduces the time
axis with six Conv3d(k=(4,1,1), stride (2,1,1)) layers; their output has exactly one frame only for
64 ≤ T ≤ 127, so other frame counts are refused (resample the series to 80 frames, as the authors did).

The authors' bugs, each fixed here with their as-run setting kept as a switch:
- `ngf` was never forwarded to the U-Net inside temp-pix2pix, so their "ngf 128" U-Net had ngf 16: here the
  two widths are separate arguments (`ngf` temporal, `unet_ngf`); 16 reproduces the runs, 128 the intent
  (98,529,793 parameters);
- their discriminator ended in a Sigmoid that BCE-with-logits then squashed again: `PatchDiscriminator`
  returns logits; `sigmoid_output=True` reproduces the double sigmoid;
- λ of the L1 term: see `lightning_modules.pix2pix`.

Every network keeps its constructor arguments in `init_args`, so checkpoints rebuild it from plain data.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Init = Literal["authors", "pix2pix", "torch"]
MIN_FRAMES, MAX_FRAMES = 64, 127  # the six stride-2 temporal convs leave exactly one frame only in this range


def init_weights(net: nn.Module, init: Init) -> None:
    """Weight initialisation.

    "authors": as their code: Conv2d weights and biases ~ N(0, 0.05), BatchNorm weights ~ N(0, 0.05) and
    biases 0; ConvTranspose2d and Conv3d keep torch's defaults. "pix2pix": Isola et al.'s N(0, 0.02) convs
    (all kinds), BatchNorm weights N(1, 0.02), biases 0. "torch": nothing changed.
    """
    if init == "torch":
        return
    if init not in ("authors", "pix2pix"):
        raise ValueError(f"networks/pix2pix.py: init must be 'authors', 'pix2pix' or 'torch', got {init!r}")
    for m in net.modules():
        if init == "authors":
            if type(m) is nn.Conv2d:
                nn.init.normal_(m.weight, 0.0, 0.05)
                if m.bias is not None:
                    nn.init.normal_(m.bias, 0.0, 0.05)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.normal_(m.weight, 0.0, 0.05)
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def up_layer(in_ch: int, out_ch: int, upsampling: bool, bias: bool) -> nn.Module:
    """×2 upsampling: nearest → ReflectionPad(1) → Conv3×3 (with bias) when `upsampling`, else ConvTranspose(k4 s2)."""
    if upsampling:
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                             nn.Conv2d(in_ch, out_ch, kernel_size=3, bias=True))  # fmt: skip
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)


class UnetSkipBlock(nn.Module):
    """One level of pix2pix's U-Net: down → submodule → up, its input concatenated to its output (not outermost)."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, upsampling: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)  # BN follows
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), up_layer(inner_nc * 2, outer_nc, upsampling, bias=True), nn.Tanh()]
        elif innermost:
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), up_layer(inner_nc, outer_nc, upsampling, bias=False), nn.BatchNorm2d(outer_nc)]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, nn.BatchNorm2d(inner_nc)]
            up = [nn.ReLU(True), up_layer(inner_nc * 2, outer_nc, upsampling, bias=False), nn.BatchNorm2d(outer_nc)]
        middle = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: (B, in_channels, H, W) → (B, out_channels, H, W) in [-1, 1] (tanh).

    Widths ngf, 2ngf, 4ngf, then 8ngf for the remaining `num_downs - 3` levels; H and W must be divisible by
    2**num_downs (6 downs: 128² → 2² bottleneck). As "pix2pix" the 80 DSC frames are the input channels.
    Dropout is 0 in the authors' runs, so none is built.
    """

    def __init__(self, in_channels: int = 80, out_channels: int = 1, num_downs: int = 6, ngf: int = 128,
                 upsampling: bool = True, init: Init = "authors") -> None:  # fmt: skip
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"networks/pix2pix.py: UnetGenerator needs num_downs ≥ 5 (pix2pix's layout), got {num_downs}")
        self.init_args: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels, num_downs=num_downs,
                                              ngf=ngf, upsampling=upsampling, init=init)  # fmt: skip
        self.num_downs = num_downs
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, upsampling=upsampling)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, upsampling=upsampling)
        for mult in (4, 2, 1):
            block = UnetSkipBlock(ngf * mult, ngf * mult * 2, submodule=block, upsampling=upsampling)
        self.model = UnetSkipBlock(out_channels, ngf, input_nc=in_channels, submodule=block, outermost=True,
                                   upsampling=upsampling)  # fmt: skip
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.num_downs
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"networks/pix2pix.py: UnetGenerator with {self.num_downs} downs needs (B, C, H, W) with H"
                             f" and W divisible by {factor}, got {tuple(x.shape)}")  # fmt: skip
        return self.model(x)


def check_frames(frames: int, what: str = "TemporalUnetGenerator") -> None:
    """temp-pix2pix's six temporal convs reduce T frames to exactly one only for 64 ≤ T ≤ 127."""
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ValueError(f"networks/pix2pix.py: {what} needs {MIN_FRAMES} ≤ frames ≤ {MAX_FRAMES} (six stride-2"
                         f" temporal convolutions must leave one frame), got {frames}; resample the DSC series to 80"
                         " frames (--data.init_args.frames 80)")  # fmt: skip


class TemporalUnetGenerator(nn.Module):
    """temp-pix2pix: (B, T, H, W) → six Conv3d(k=(4,1,1), s=(2,1,1), p=(1,0,0)) + BN3d + LeakyReLU(0.2) over time,
    channels 1 → ngf·(1, 2, 4, 8, 8, 8), T → 1 → a `UnetGenerator` with 8·ngf input channels and `unet_ngf`.

    `unet_ngf` 16 is what the authors ran (their `ngf` was not forwarded to the U-Net), 128 what they meant.
    """

    n_temporal = 6

    def __init__(self, frames: int = 80, out_channels: int = 1, ngf: int = 128, unet_ngf: int = 16,
                 num_downs: int = 6, upsampling: bool = True, init: Init = "authors") -> None:  # fmt: skip
        super().__init__()
        check_frames(frames)
        self.init_args: dict[str, Any] = dict(frames=frames, out_channels=out_channels, ngf=ngf, unet_ngf=unet_ngf,
                                              num_downs=num_downs, upsampling=upsampling, init=init)  # fmt: skip
        self.frames = frames
        layers: list[nn.Module] = []
        channels = 1
        for i in range(self.n_temporal):
            out = ngf * min(2**i, 8)
            layers += [nn.Conv3d(channels, out, kernel_size=(4, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
                       nn.BatchNorm3d(out), nn.LeakyReLU(0.2, True)]  # fmt: skip
            channels = out
        self.temporal = nn.Sequential(*layers)
        self.unet = UnetGenerator(channels, out_channels, num_downs, unet_ngf, upsampling, init)
        init_weights(self.temporal, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.frames:
            raise ValueError(f"networks/pix2pix.py: TemporalUnetGenerator(frames={self.frames}) needs (B, {self.frames},"
                             f" H, W), got {tuple(x.shape)}")  # fmt: skip
        return self.unet(self.temporal(x.unsqueeze(1)).squeeze(2))


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN on cat(frames, map): (B, in_channels, H, W) → (B, 1, h, w) logits.

    Conv(k4 s2) + LeakyReLU, (n_layers − 1) × [Conv(k4 s2) + BN + LeakyReLU], Conv(k4 s1) + BN + LeakyReLU,
    Conv(k4 s1) → 1; widths ndf·min(2^n, 8). n_layers 2 (the authors' README, "3 conv layers + final conv"):
    30×30 patches at 128². `sigmoid_output=True` appends the authors' Sigmoid (their double-sigmoid bug).
    """

    def __init__(self, in_channels: int = 81, ndf: int = 64, n_layers: int = 2, sigmoid_output: bool = False,
                 init: Init = "authors") -> None:  # fmt: skip
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"networks/pix2pix.py: PatchDiscriminator needs n_layers ≥ 1, got {n_layers}")
        self.init_args: dict[str, Any] = dict(in_channels=in_channels, ndf=ndf, n_layers=n_layers,
                                              sigmoid_output=sigmoid_output, init=init)  # fmt: skip
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]  # fmt: skip
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        if sigmoid_output:
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
