"""Half U-Net shapes, parameter count at the paper widths, invalid arguments (MONAI test style)."""

from __future__ import annotations

import pytest
import torch

from networks.unet2d import PAPER_FEATURES, HalfUNet2D

# (constructor kwargs, input shape, expected output shape)
SHAPE_CASES = [
    ({"features": (4, 8, 16)}, (2, 1, 32, 32), (2, 1, 32, 32)),
    ({"features": (4, 8, 16)}, (1, 1, 8, 12), (1, 1, 8, 12)),
    ({"features": [4, 8], "in_channels": 2, "out_channels": 3}, (3, 2, 6, 10), (3, 3, 6, 10)),
    ({"features": (2, 4, 8, 8, 8), "dropout": 0.1}, (1, 1, 32, 48), (1, 1, 32, 48)),
    ({"features": (4, 8, 16), "spatial_dims": 3}, (1, 1, 8, 16, 4), (1, 1, 8, 16, 4)),
    ({"features": (2, 4), "spatial_dims": 3, "out_channels": 2}, (2, 1, 4, 4, 2), (2, 2, 4, 4, 2)),
]


@pytest.mark.parametrize("kwargs, in_shape, out_shape", SHAPE_CASES)
def test_shape(kwargs, in_shape, out_shape):
    net = HalfUNet2D(**kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


def _block_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + c_out + 9 * c_out * c_out + c_out


def test_parameter_count_at_paper_widths():
    net = HalfUNet2D()
    f = PAPER_FEATURES
    expected = _block_params(1, f[0]) + sum(_block_params(a, b) for a, b in zip(f[:-1], f[1:]))
    expected += sum(_block_params(deep + skip, skip) for deep, skip in zip(f[:0:-1], f[-2::-1]))
    expected += f[0] + 1  # 1×1 head
    n = sum(p.numel() for p in net.parameters())
    assert n == expected == 7_846_081  # the paper's ≈7.85 M
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in net.modules())


def test_returns_logits_and_dropout_only_in_train():
    net = HalfUNet2D(features=(4, 8), dropout=0.5)
    x = torch.randn(2, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    net.train()
    assert not torch.equal(net(x), a)
    with torch.no_grad():
        net.head.conv.bias.fill_(-50.0)
        assert net.eval()(x).max() < 0  # unbounded logits, no sigmoid inside


def test_gradients_flow():
    net = HalfUNet2D(features=(4, 8, 16))
    net(torch.randn(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"features": (4,)}, {"features": (4, 0)}, {"dropout": 1.0}, {"dropout": -0.1}, {"spatial_dims": 1},
     {"in_channels": 0}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="HalfUNet2D"):
        HalfUNet2D(**kwargs)


@pytest.mark.parametrize(
    "features, shape, match",
    [((4, 8, 16), (1, 1, 30, 32), "divisible by 2\\*\\*2 = 4"), ((4, 8), (1, 1, 8, 8, 8), "4-D input"),
     ((4, 8, 16), (1, 1, 96, 94), "divisible")],
)
def test_invalid_input(features, shape, match):
    with pytest.raises(ValueError, match=match):
        HalfUNet2D(features=features)(torch.zeros(shape))
