"""The "half U-Net" of Livne et al. 2019 (vessel segmentation in TOF-MRA): the 2D papers' configuration of
`networks.unet.UNet`, in 2D or 3D.

Half the filters of Ronneberger's U-Net (32/64/128/256/512), no batch norm, dropout between the two
convolutions of every block, nearest-neighbour upsampling (no transposed convolution) followed by
concatenation with the skip connection. At the paper widths in 2D with one input channel this has
7,846,081 parameters (the paper's ≈7.85 M), which also pins the upsampling choice: a 2×2 transposed
convolution would add ≈0.7 M.

The network returns LOGITS. The paper's final sigmoid is applied by the loss
(`monai.losses.DiceLoss(sigmoid=True)`) and at inference, because sigmoid-then-loss in fp16/bf16
saturates while the fused form stays numerically stable.

Kept as its own class (same arguments, same state-dict keys as before the generalisation) so configs and
checkpoints naming `networks.unet2d.HalfUNet2D` keep working; the 3D paper's U-Net is `networks.unet.UNet`
with BatchNorm, an input BatchNorm and a 1×1×1 bottleneck (`configs/model/unet3d.yaml`).
"""

from __future__ import annotations

from collections.abc import Sequence

from networks.unet import UNet

PAPER_FEATURES: tuple[int, ...] = (32, 64, 128, 256, 512)


class HalfUNet2D(UNet):
    """Livne et al.'s half U-Net; `spatial_dims=3` gives the same topology with 3D convolutions.

    Args:
        in_channels: image channels (1 for TOF-MRA).
        out_channels: logit channels (1 for binary vessel segmentation).
        features: filters per level, encoder top to bottleneck; `len(features) - 1` poolings.
        dropout: dropout probability between the two convolutions of each block (paper grid {0, 0.1}).
        spatial_dims: 2 (axial patches, the paper) or 3.

    Input sizes must be divisible by `2 ** (len(features) - 1)` (`UNet` raises `ValueError` otherwise).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = PAPER_FEATURES,
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(in_channels, out_channels, features, dropout, spatial_dims, norm=None, adn_ordering="AND",
                         input_norm=False, bottleneck_fc=0)
