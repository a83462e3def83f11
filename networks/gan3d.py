"""3D generator and WGAN critic of Subramaniam et al. 2022 (SPEC §3.2; `../shared/notes/3d-paper.md` A1).

Generator: z → Linear → (ngf, H/8, W/8, D/8) → BN3d/ReLU → 3 × [nearest ×2 → Conv3d k3 → BN3d → ReLU]
(ngf → ngf/2 → ngf/4 → ngf/8) → Conv3d k3 → 2 channels → tanh. At the paper's 128×128×64 and ngf 512 it has
139,916,994 parameters (135,266,304 in the Linear); ngf 1024 (c-SN-MP) 289,123,714.

Critic: 4 × [Conv3d k3 s2 p1 → InstanceNorm3d (GP) | spectral norm (SN) → LeakyReLU 0.2], channels
2 → ndf/8 → ndf/4 → ndf/2 → ndf, then Linear(ndf·h·w·d → 1) (not spectrally normalised, as the authors').
At 128×128×64: 4,780,353 parameters (ndf 512), 18,850,433 (ndf 1024). The convs keep their bias even before
InstanceNorm (it cancels, but the authors' parameter count includes it).

`upsample="subpixel"` is an exact, cheaper form of the generator: nearest ×2 followed by a k3 conv equals a
stride-2 transposed conv with the k4 kernel W4 = (M⊗M⊗M)·w3, M = [[0,0,1],[0,1,1],[1,1,0],[1,0,0]] per axis
(per axis, output 2m takes w0·x[m−1] + (w1+w2)·x[m], output 2m+1 takes (w0+w1)·x[m] + w2·x[m+1]). The k3
weights stay the parameters and are folded at every forward, so both forms have the same state_dict, the same
function and the same gradients, and the upsampled tensor is never built: 8/27 of the conv FLOPs.

Both networks keep their constructor arguments in `init_args` (checkpoints rebuild them from hyper-parameters,
`lightning_modules.gan_base`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

#: Per-axis fold of nearest ×2 + k3 conv into a k4 stride-2 transposed conv (rows: k4 taps, cols: k3 taps).
FOLD = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

Init = Literal["default", "authors"]


def _size3(size: Any, where: str, multiple: int) -> tuple[int, int, int]:
    """A 3-entry size whose entries are positive multiples of `multiple`."""
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < multiple or any(s % multiple for s in size):
        raise ValueError(f"networks/gan3d.py: {where} must be 3 positive multiples of {multiple}, got {list(size)}")
    return size  # type: ignore[return-value]


def authors_init(module: nn.Module) -> None:
    """The authors' `weights_init`: conv weights ~ N(0, 0.05); BatchNorm weight ~ N(0, 0.05) (mean 0, not 1),
    bias 0; Linear layers keep torch's defaults. Spectral-norm convs are initialised through their original."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.05)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.normal_(m.weight, 0.0, 0.05)
            nn.init.zeros_(m.bias)


def fold_nearest_conv(weight: torch.Tensor) -> torch.Tensor:
    """Conv3d k3 weight (out, in, 3, 3, 3) → ConvTranspose3d k4 weight (in, out, 4, 4, 4) of the same map
    after nearest ×2 upsampling (see the module docstring)."""
    m = FOLD.to(device=weight.device, dtype=weight.dtype)
    return torch.einsum("ai,bj,ck,oxijk->xoabc", m, m, m, weight)


class UpConv3d(nn.Module):
    """nearest ×2 upsampling then Conv3d k3 p1; `mode="subpixel"` computes the same as one folded transposed conv.

    The parameters are the k3 conv's in both modes, so state_dicts are interchangeable.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: Literal["nearest", "subpixel"] = "nearest") -> None:
        super().__init__()
        if mode not in ("nearest", "subpixel"):
            raise ValueError(f"networks/gan3d.py: upsample must be 'nearest' or 'subpixel', got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv3d(in_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        # autocast casts the folded weight with the input, as it would the k3 weight of the nearest form
        return F.conv_transpose3d(x, fold_nearest_conv(self.conv.weight), self.conv.bias, stride=2, padding=1)


class Generator3D(nn.Module):
    """z (N, latent_dim) → (N, out_channels, H, W, D) through tanh; see the module docstring.

    Args:
        latent_dim: noise size (128 in the paper).
        ngf: channels at the bottleneck (512 paper; 1024 c-SN-MP); must be divisible by 8.
        out_channels: 2 (image, label).
        out_size: (H, W, D), multiples of 8 (the bottleneck is out_size / 8): (128, 128, 64) in the paper.
        upsample: "nearest" (the authors' form) or "subpixel" (the same function folded, ≈⅓ of the FLOPs).
        init: "default" (torch) or "authors" (N(0, 0.05) conv weights and BatchNorm weights).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        ngf: int = 512,
        out_channels: int = 2,
        out_size: tuple[int, int, int] | list[int] = (128, 128, 64),
        upsample: Literal["nearest", "subpixel"] = "nearest",
        init: Init = "default",
    ) -> None:
        super().__init__()
        if latent_dim < 1 or ngf < 8 or ngf % 8 or out_channels < 1 or init not in ("default", "authors"):
            raise ValueError("networks/gan3d.py: Generator3D needs latent_dim ≥ 1, ngf a multiple of 8, out_channels"
                             f" ≥ 1, init 'default'/'authors'; got {latent_dim}, {ngf}, {out_channels}, {init!r}")
        size = _size3(out_size, "Generator3D out_size", 8)
        self.init_args: dict[str, Any] = dict(latent_dim=latent_dim, ngf=ngf, out_channels=out_channels,
                                              out_size=list(size), upsample=upsample, init=init)  # fmt: skip
        self.latent_dim = latent_dim
        self.bottleneck = (ngf, *(s // 8 for s in size))
        self.fc = nn.Linear(latent_dim, math.prod(self.bottleneck))
        self.bn0 = nn.BatchNorm3d(ngf)
        blocks: list[nn.Module] = []
        for width in (ngf, ngf // 2, ngf // 4):
            blocks += [UpConv3d(width, width // 2, upsample), nn.BatchNorm3d(width // 2), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv3d(ngf // 8, out_channels, 3, 1, 1)
        if init == "authors":
            authors_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.fc(z.reshape(z.shape[0], self.latent_dim)).view(-1, *self.bottleneck)))
        return torch.tanh(self.out(self.blocks(h)))


class WGANCritic3D(nn.Module):
    """(N, in_channels, H, W, D) → one unbounded score per sample, shape (N,); see the module docstring.

    Args:
        in_channels: 2 (image, label).
        ndf: channels of the last conv (512 paper; 1024 c-SN-MP); the first has ndf/8.
        in_size: (H, W, D), multiples of 8; each stride-2 conv gives ceil(s/2), so the Linear sees ceil(s/16)
            (8×8×4 at 128×128×64).
        norm: "instance" (GP: InstanceNorm3d, affine-free, per sample, so the penalty stays per-sample),
            "spectral" (SN variants: spectral norm on every conv, not on the Linear) or "none".
        init: "default" (torch) or "authors" (N(0, 0.05) conv weights).
    """

    def __init__(
        self,
        in_channels: int = 2,
        ndf: int = 512,
        in_size: tuple[int, int, int] | list[int] = (128, 128, 64),
        norm: Literal["instance", "spectral", "none"] = "instance",
        init: Init = "default",
    ) -> None:
        super().__init__()
        if norm not in ("instance", "spectral", "none"):
            raise ValueError(f"networks/gan3d.py: WGANCritic3D norm must be 'instance', 'spectral' or 'none', got {norm!r}")
        if in_channels < 1 or ndf < 8 or ndf % 8 or init not in ("default", "authors"):
            raise ValueError("networks/gan3d.py: WGANCritic3D needs in_channels ≥ 1, ndf a multiple of 8, init"
                             f" 'default'/'authors'; got {in_channels}, {ndf}, {init!r}")
        size = _size3(in_size, "WGANCritic3D in_size", 8)
        if norm == "instance" and max(size) < 32:
            raise ValueError(f"networks/gan3d.py: WGANCritic3D in_size {list(size)} leaves 1 voxel after 4 stride-2"
                             " convs, which InstanceNorm cannot normalise; use an in_size with an entry ≥ 32")
        self.init_args: dict[str, Any] = dict(in_channels=in_channels, ndf=ndf, in_size=list(size), norm=norm, init=init)
        layers: list[nn.Module] = []
        in_ch = in_channels
        for width in (ndf // 8, ndf // 4, ndf // 2, ndf):
            conv = nn.Conv3d(in_ch, width, 3, 2, 1)
            layers.append(_sn(conv) if norm == "spectral" else conv)
            if norm == "instance":
                layers.append(nn.InstanceNorm3d(width, affine=False, track_running_stats=False))
            layers.append(nn.LeakyReLU(0.2))
            in_ch = width
        self.conv_stack = nn.Sequential(*layers)
        self.head = nn.Linear(ndf * math.prod(-(-s // 16) for s in size), 1)
        if init == "authors":
            authors_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activation after the last conv block, (N, ndf, h, w, d): for feature matching."""
        return self.conv_stack(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).flatten()
