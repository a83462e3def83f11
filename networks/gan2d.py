"""2D generator and WGAN critic of Kossen et al. 2021 (SPEC §3.1), sized by a 3·2^k ladder.

Both networks grow/shrink the spatial size by 2 per stage from a 3×3 bottleneck, so `out_size`/`in_size`
must be 3·2^k: 96 (paper, k = 5), 48, 24 (CPU tests and the demo). The channel ladder keeps `ngf`/`ndf` as
the width next to the image and doubles it towards the bottleneck, so a smaller size drops the widest
stages (at 96: 16·ngf @3 … ngf @48; at 24: 4·ngf @3, 2·ngf @6, ngf @12).

Both modules keep their constructor arguments in `init_args`: `lightning_modules.gan_base.GANModule`
stores `{"class_path", "init_args"}` in the checkpoint's hyper-parameters instead of pickling the network,
so a checkpoint is reloadable from plain data.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


def n_stages(size: int, where: str) -> int:
    """k such that size = 3·2^k (k ≥ 1); the networks need a 3×3 bottleneck."""
    k = round(math.log2(size / 3)) if size >= 3 else -1
    if k < 1 or 3 * 2**k != size:
        raise ValueError(f"networks/gan2d.py: {where} must be 3·2^k with k ≥ 1 (6, 12, 24, 48, 96, …), got {size}")
    return k


class Generator2D(nn.Module):
    """z → (image, label) pair through tanh.

    First a k5 stride-1 transposed conv maps the 1×1 noise to 3×3 (padding 1), then k5 stride-2 transposed
    convs (padding 2, output_padding 1) double the size. BatchNorm + ReLU between layers; with
    `spectral_norm=True` every transposed conv (the output layer included) is spectrally normalised and
    BatchNorm is removed (SPEC §3.1). Convs followed by BatchNorm carry no bias (BN's shift replaces it).
    Paper width (latent 128, ngf 96, 96×96) has 44.1 M parameters; with latent 100 (DCGAN) 43.0 M.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        ngf: int = 96,
        out_channels: int = 2,
        out_size: int = 96,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or ngf < 1 or out_channels < 1:
            raise ValueError(
                "networks/gan2d.py: latent_dim, ngf, out_channels must be ≥ 1,"
                f" got {latent_dim}, {ngf}, {out_channels}"
            )
        k = n_stages(out_size, "Generator2D out_size")
        self.init_args: dict[str, Any] = dict(
            latent_dim=latent_dim, ngf=ngf, out_channels=out_channels, out_size=out_size, spectral_norm=spectral_norm
        )
        self.latent_dim = latent_dim
        widths = [ngf * 2 ** (k - 1 - i) for i in range(k)]  # 3×3 … size/2
        layers: list[nn.Module] = []
        in_ch = latent_dim
        for i, width in enumerate(widths):
            stride, pad, out_pad = (1, 1, 0) if i == 0 else (2, 2, 1)
            conv = nn.ConvTranspose2d(in_ch, width, 5, stride, pad, out_pad, bias=spectral_norm)
            if spectral_norm:
                layers += [_sn(conv), nn.ReLU(inplace=True)]
            else:
                layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_ch = width
        last = nn.ConvTranspose2d(in_ch, out_channels, 5, 2, 2, 1)
        layers += [_sn(last) if spectral_norm else last, nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z of shape (N, latent_dim) or (N, latent_dim, 1, 1) → (N, out_channels, out_size, out_size)."""
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class WGANCritic2D(nn.Module):
    """(image, label) pair → one unbounded score per sample, shape (N,).

    k stride-2 convs (`kernel_size` 5, padding 2 in the paper; 4 with padding 1 for the DP-WGAN, SPEC §3.3)
    widen ndf → 2·ndf → … → 2^(k-1)·ndf (1536 at paper width) while halving the size to 3×3; each is
    followed by a normaliser and LeakyReLU(0.2), then a 3×3 valid conv (a linear layer over the
    3×3 map) gives the score.

    `norm`:
    - "instance": InstanceNorm2d(affine=False, no running stats) after every strided conv — WGAN-GP.
      Per-sample, so it neither mixes samples (the gradient penalty stays per-sample) nor breaks DP-SGD.
    - "spectral": spectral norm on EVERY conv, the final score conv included (Miyato et al. normalise all
      layers); InstanceNorm is dropped — WGAN-GP-SN. opacus cannot hook parametrised spectral norm, so
      this variant is not for DP training.
    - "none": plain convs (DP-WGAN with weight clipping).
    "instance" and "none" work with opacus' GradSampleModule (tests/test_gan2d.py checks per-sample grads).
    Convs followed by InstanceNorm carry no bias: the mean subtraction cancels it (its gradient is 0);
    nor does the score conv: a constant shift of the score cancels in every Wasserstein loss term.
    There is never a BatchNorm in the critic: it would mix samples (breaking the per-sample gradient
    penalty and per-sample DP clipping).
    """

    def __init__(
        self,
        in_channels: int = 2,
        ndf: int = 96,
        in_size: int = 96,
        norm: Literal["instance", "spectral", "none"] = "instance",
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if norm not in ("instance", "spectral", "none"):
            raise ValueError(
                f"networks/gan2d.py: WGANCritic2D norm must be 'instance', 'spectral' or 'none', got {norm!r}"
            )
        if kernel_size not in (3, 4, 5):
            raise ValueError(
                f"networks/gan2d.py: WGANCritic2D kernel_size must be 3, 4 or 5 (halves the size), got {kernel_size}"
            )
        if in_channels < 1 or ndf < 1:
            raise ValueError(f"networks/gan2d.py: in_channels and ndf must be ≥ 1, got {in_channels}, {ndf}")
        k = n_stages(in_size, "WGANCritic2D in_size")
        self.init_args: dict[str, Any] = dict(
            in_channels=in_channels, ndf=ndf, in_size=in_size, norm=norm, kernel_size=kernel_size
        )
        wrap = _sn if norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        in_ch = in_channels
        for i in range(k):
            width = ndf * 2**i
            conv = nn.Conv2d(in_ch, width, kernel_size, 2, (kernel_size - 1) // 2, bias=norm != "instance")
            layers.append(wrap(conv))
            if norm == "instance":
                layers.append(nn.InstanceNorm2d(width, affine=False, track_running_stats=False))
            layers.append(nn.LeakyReLU(0.2))  # not in-place: opacus' hooks make the conv output a view
            in_ch = width
        self.conv_stack = nn.Sequential(*layers)
        self.head = wrap(nn.Conv2d(in_ch, 1, 3, bias=False))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activation after the last strided conv block, (N, 2^(k-1)·ndf, 3, 3): for feature matching."""
        return self.conv_stack(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
