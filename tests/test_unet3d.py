"""One U-Net family in 2D and 3D (networks.unet.UNet, the half U-Net as its 2D configuration): shape table in both
dimensionalities (MONAI test style), the 3D paper's parameter count, the block layout, 3D sliding window."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from lightning_modules.input_norm import zscore
from lightning_modules.segmentation import SegmentationModule
from networks.unet import HILBERT_FEATURES, UNet, count_parameters
from networks.unet2d import HalfUNet2D

BRAVE = {"norm": "batch", "input_norm": True, "bottleneck_fc": 2, "dropout": 0.1}

# (constructor kwargs, input shape, expected output shape), each run as UNet in 2D and 3D
SHAPE_CASES = [
    ({"features": (4, 8, 16)}, (2, 1, 16, 8), (2, 1, 16, 8)),
    ({"features": (4, 8, 16), **BRAVE}, (2, 1, 8, 12), (2, 1, 8, 12)),
    ({"features": (2, 4), "in_channels": 2, "out_channels": 3, **BRAVE}, (3, 2, 6, 4), (3, 3, 6, 4)),
    ({"features": (2, 4, 8, 8), "norm": "instance", "adn_ordering": "NDA"}, (1, 1, 16, 8), (1, 1, 16, 8)),
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kwargs, in_shape, out_shape", SHAPE_CASES)
def test_shape_2d_and_3d(dims: int, kwargs: dict, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    extra = (8,) if dims == 3 else ()
    net = UNet(spatial_dims=dims, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(*in_shape, *extra)).shape == (*out_shape, *extra)


def test_paper_parameter_counts() -> None:
    """3D paper (Hilbert-style, 4 levels 32–256, BN, input BN, 2 FC): 5,970,435, the notes' count; without the
    BN, input BN and bottleneck it is the half U-Net topology in 3D (5,836,033); the 2D half U-Net is unchanged."""
    with torch.device("meta"):
        brave = UNet(features=HILBERT_FEATURES, **BRAVE)
        plain3d = HalfUNet2D(features=HILBERT_FEATURES, spatial_dims=3)
        half = HalfUNet2D()
    assert count_parameters(brave) == 5_970_435
    assert count_parameters(plain3d) == 5_836_033
    assert count_parameters(half) == 7_846_081
    bn = 2 * 2 * (sum(HILBERT_FEATURES) + sum(HILBERT_FEATURES[:-1])) + 2  # blocks' BN + input BN (weight, bias)
    assert count_parameters(brave) - count_parameters(plain3d) == bn + 2 * (256 * 256 + 256)


def test_block_layout_relu_before_bn_input_bn_and_bottleneck() -> None:
    net = UNet(features=(4, 8, 16), **BRAVE)
    assert isinstance(net.input_norm, nn.BatchNorm3d)
    first, second = net.encoders[0]
    assert [type(m) for m in first.adn.children()] == [nn.ReLU, nn.BatchNorm3d, nn.Dropout]
    assert [type(m) for m in second.adn.children()] == [nn.ReLU, nn.BatchNorm3d]
    convs = [m.conv for m in net.bottleneck]
    assert len(convs) == 2 and all(c.kernel_size == (1, 1, 1) and c.in_channels == c.out_channels == 16 for c in convs)


def test_half_unet_is_the_plain_configuration() -> None:
    """Same modules and state-dict keys as before the generalisation: old checkpoints keep loading."""
    net = HalfUNet2D(features=(4, 8, 16))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in net.modules())
    keys = list(net.state_dict())
    assert keys[0] == "encoders.0.0.conv.weight" and not any("norm" in k or "bottleneck" in k for k in keys)
    assert isinstance(net, UNet) and net.spatial_dims == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [({"adn_ordering": "AN"}, "adn_ordering"), ({"bottleneck_fc": -1}, "bottleneck_fc"),
     ({"spatial_dims": 4}, "spatial_dims"), ({"features": (4,)}, "features")],
)
def test_invalid_arguments_name_the_class(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"UNet: .*{match}"):
        UNet(**kwargs)


def test_3d_sliding_window_equals_direct_forward_when_one_window_covers_the_volume() -> None:
    torch.manual_seed(0)
    net = UNet(features=(2, 4, 8), **BRAVE)
    with torch.no_grad():  # non-trivial running statistics
        net.train()(torch.randn(4, 1, 16, 16, 8) * 2 + 1)
    m = SegmentationModule(net, roi_size=(16, 16, 8)).eval()
    vol = torch.randn(1, 1, 16, 16, 8) * 3 + 7
    with torch.no_grad():
        direct = torch.sigmoid(net(zscore(vol)))
    torch.testing.assert_close(m.predict_volume(vol), direct, rtol=1e-5, atol=1e-6)


def test_sliding_window_counts_of_the_paper_volume() -> None:
    """Windows of (128, 128, 64) on the PEGASUS 312×384×127 grid: 18 / 36 / 60 at overlap 0 / 0.25 / 0.5."""
    for overlap, want in ((0.0, 18), (0.25, 36), (0.5, 60)):
        calls = []

        def count(x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return x

        sliding_window_inference(torch.zeros(1, 1, 312, 384, 127), (128, 128, 64), 1, count, overlap=overlap,
                                 mode="constant")
        assert sum(calls) == want, overlap


def test_roi_dimensionality_must_match_the_net() -> None:
    with pytest.raises(ValueError, match=r"roi_size \[32, 32\] has 2 entries but the net UNet is 3D"):
        SegmentationModule(UNet(features=(2, 4)), roi_size=(32, 32))
