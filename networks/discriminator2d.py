"""DCGAN discriminator of Kossen et al. 2021 (SPEC §3.1), with the authors' minibatch-discrimination head.

Body: k5 stride-2 convs that widen ndf → 2·ndf → … while halving the size down to 6×6 (at paper width:
96 @48, 192 @24, 384 @12, 768 @6 — 4 stages; 3·2^k inputs as in `networks.gan2d`, a smaller input drops
the widest stages). Each conv is followed by BatchNorm and LeakyReLU(0.2), except the first, which has no
BatchNorm (DCGAN convention, Radford et al. 2016: normalising the raw image pair's statistics away hurts;
the authors' code had BN on the first layer too).

Head (as in the authors' code, `DCGAN/model.py` with `mbdiscr=True`): a projection conv (k5 s2 p1, to
`head_channels` = 50 maps at 2×2 = 200 features) — "the last conv layer" whose output `features()` returns
for feature matching — then Linear(200, 200), minibatch discrimination (Salimans et al. 2016), and a final
Linear to ONE LOGIT per sample. There is no sigmoid here: the DCGAN module applies it inside
`binary_cross_entropy_with_logits` (log-sum-exp form, stable where BCE on a sigmoid output saturates).
With `minibatch_discrimination=False` the same head simply skips the minibatch features, so the switch
changes nothing else.

BatchNorm and minibatch discrimination both mix the samples of a batch: feed real and fake batches in
separate forward passes (the DCGAN module does), never concatenated, or the discriminator can tell them
apart by batch statistics alone.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn

from networks.gan2d import n_stages


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016 §3.2: x (N, A) → [x, c] (N, A + B) with c_b(x_i) = Σ_{j≠i} exp(−‖M_i,b − M_j,b‖₁).

    M = x·T with T of shape (A, B·C), reshaped to (N, B, C). Written by hand: neither torch nor MONAI has
    this layer (the authors used torchgan's `MinibatchDiscrimination1d`, which also leaves out j = i).
    T ~ N(0, 0.05) as in Salimans et al.'s code; torchgan's N(0, 1) makes the L1 distances so large at
    initialisation that exp(−‖·‖₁) is 0 for every pair and the layer starts without gradient.
    """

    def __init__(self, in_features: int, n_kernels: int = 100, kernel_dim: int = 5) -> None:
        super().__init__()
        self.n_kernels, self.kernel_dim = n_kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, n_kernels * kernel_dim) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 even under autocast: the distances are differences of nearby values (cheap: (N, A)·(A, B·C))
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            m = (x.to(dtype) @ self.T.to(dtype)).reshape(x.shape[0], self.n_kernels, self.kernel_dim)
            l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (N, N, B): ‖M_i,b − M_j,b‖₁
            c = torch.exp(-l1).sum(1) - 1.0  # the j = i term is exp(0) = 1
        return torch.cat([x, c.to(x.dtype)], dim=1)


class DCGANDiscriminator2D(nn.Module):
    """(image, label) pair (N, 2, H, W) → one logit per sample, shape (N,). See the module docstring.

    Args:
        in_channels: 2 (image and label).
        ndf: width of the first conv (96 in the paper; 768 = 8·ndf at 6×6).
        in_size: 3·2^k with k ≥ 2 (12, 24, 48, 96, …): the body ends at 6×6.
        kernel_size: of the strided convs (5 in the paper; 3 or 4 also halve the size).
        minibatch_discrimination: add Salimans et al.'s minibatch features before the final linear.
        mbd_kernels, mbd_dim: B and C of the minibatch tensor T (A, B·C). Salimans et al. used 100 × 5; the
            authors' torchgan layer 100 × 16 (configs/model/dcgan.yaml).
        head_channels: maps of the projection conv (authors: 50 → 200 features at 2×2).
    """

    def __init__(
        self,
        in_channels: int = 2,
        ndf: int = 96,
        in_size: int = 96,
        kernel_size: int = 5,
        minibatch_discrimination: bool = True,
        mbd_kernels: int = 100,
        mbd_dim: int = 5,
        head_channels: int = 50,
    ) -> None:
        super().__init__()
        if kernel_size not in (3, 4, 5):
            raise ValueError(f"networks/discriminator2d.py: kernel_size must be 3, 4 or 5 (halves the size), got {kernel_size}")
        if min(in_channels, ndf, mbd_kernels, mbd_dim, head_channels) < 1:
            raise ValueError(
                "networks/discriminator2d.py: in_channels, ndf, mbd_kernels, mbd_dim, head_channels must be ≥ 1,"
                f" got {in_channels}, {ndf}, {mbd_kernels}, {mbd_dim}, {head_channels}"
            )
        k = n_stages(in_size, "DCGANDiscriminator2D in_size")
        if k < 2:
            raise ValueError(f"networks/discriminator2d.py: in_size must be ≥ 12 (body ends at 6×6), got {in_size}")
        self.init_args: dict[str, Any] = dict(
            in_channels=in_channels, ndf=ndf, in_size=in_size, kernel_size=kernel_size,
            minibatch_discrimination=minibatch_discrimination, mbd_kernels=mbd_kernels, mbd_dim=mbd_dim,
            head_channels=head_channels,
        )  # fmt: skip
        act = ("leakyrelu", {"negative_slope": 0.2})
        blocks: list[nn.Module] = []
        in_ch = in_channels
        for i in range(k - 1):  # 3·2^k → 6
            width = ndf * 2**i
            norm = "batch" if i > 0 else None
            blocks.append(Convolution(2, in_ch, width, strides=2, kernel_size=kernel_size, act=act, norm=norm,
                                      bias=norm is None, padding=(kernel_size - 1) // 2))  # fmt: skip
            in_ch = width
        self.body = nn.Sequential(*blocks)
        # 6×6 → 2×2 for kernel 5 (padding 1), 4 and 3 (padding 0): the head's size never depends on in_size.
        self.projection = nn.Conv2d(in_ch, head_channels, kernel_size, 2, (kernel_size - 3) // 2, bias=False)
        n_feat = head_channels * 4
        self.linear = nn.Linear(n_feat, n_feat)
        self.mbd = MinibatchDiscrimination(n_feat, mbd_kernels, mbd_dim) if minibatch_discrimination else None
        self.out = nn.Linear(n_feat + (mbd_kernels if minibatch_discrimination else 0), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last conv layer (the projection), (N, head_channels, 2, 2): for feature matching."""
        return self.projection(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.features(x).flatten(1))
        if self.mbd is not None:
            h = self.mbd(h)
        return self.out(h).flatten()


class DPCritic2D(nn.Module):
    """WGAN critic for DP-SGD (DP paper, SPEC §3.3): kernel-4 stride-2 convs, a per-sample normaliser, no bias
    mixing across samples, so opacus can compute per-sample gradients (BatchNorm cannot be used with DP-SGD).

    k stride-2 convs (k4, padding 1) widen ndf → … → 2^(k-1)·ndf while halving `in_size` = 3·2^k to 3×3, each
    followed by the normaliser and LeakyReLU(0.2); a 3×3 valid conv gives the score, shape (N,).

    `norm`:
    - "group": GroupNorm(min(groups, C), C, affine) — works on an empty batch too;
    - "instance": InstanceNorm2d(affine=True, no running statistics);
    - "none": plain convs (the paper's weight-clipped WGAN).
    Unlike `networks.gan2d.WGANCritic2D` (affine-free InstanceNorm, no conv bias), the normalisers here are
    affine, so the DP critic keeps a trainable per-channel scale and shift.
    """

    def __init__(
        self,
        in_channels: int = 2,
        ndf: int = 96,
        in_size: int = 96,
        norm: str = "group",
        groups: int = 8,
    ) -> None:
        super().__init__()
        if norm not in ("group", "instance", "none"):
            raise ValueError(f"networks/discriminator2d.py: DPCritic2D norm must be 'group', 'instance' or 'none', got {norm!r}")
        if min(in_channels, ndf, groups) < 1:
            raise ValueError(f"networks/discriminator2d.py: in_channels, ndf, groups must be ≥ 1, got {in_channels}, {ndf}, {groups}")
        k = n_stages(in_size, "DPCritic2D in_size")
        self.init_args: dict[str, Any] = dict(in_channels=in_channels, ndf=ndf, in_size=in_size, norm=norm, groups=groups)
        layers: list[nn.Module] = []
        in_ch = in_channels
        for i in range(k):
            width = ndf * 2**i
            layers.append(nn.Conv2d(in_ch, width, 4, 2, 1))
            if norm == "group":
                g = max(d for d in range(1, min(groups, width) + 1) if width % d == 0)
                layers.append(nn.GroupNorm(g, width, affine=True))
            elif norm == "instance":
                layers.append(nn.InstanceNorm2d(width, affine=True, track_running_stats=False))
            layers.append(nn.LeakyReLU(0.2))  # not in-place: opacus' hooks keep the conv output
            in_ch = width
        self.conv_stack = nn.Sequential(*layers)
        self.head = nn.Conv2d(in_ch, 1, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_stack(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
