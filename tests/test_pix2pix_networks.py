"""pix2pix / temp-pix2pix / PatchGAN: the authors' parameter counts (meta device), shapes, frame limits, logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from networks.pix2pix import PatchDiscriminator, TemporalUnetGenerator, UnetGenerator, init_weights


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# The authors' model.py run with a stub config (notes/perfusion.md B2, B6.6): every count measured there.
@pytest.mark.parametrize(("build", "count"), [
    (lambda: TemporalUnetGenerator(frames=80, ngf=128, unet_ngf=16, num_downs=6, upsampling=True), 12_750_001),
    (lambda: UnetGenerator(80, 1, num_downs=6, ngf=128, upsampling=True), 85_442_945),
    (lambda: PatchDiscriminator(81, ndf=64, n_layers=2), 743_233),
    (lambda: TemporalUnetGenerator(ngf=128, unet_ngf=128), 98_529_793),       # ngf forwarded (their intent)
    (lambda: TemporalUnetGenerator(ngf=64, unet_ngf=16, num_downs=7), 4_814_577),  # their code defaults
    (lambda: PatchDiscriminator(81, ndf=64, n_layers=3), 2_845_505),
    (lambda: TemporalUnetGenerator(ngf=4, unet_ngf=4, num_downs=5), 62_129),  # CPU variant
    (lambda: PatchDiscriminator(81, ndf=8, n_layers=2), 21_225),
], ids=["temp_pix2pix", "pix2pix", "patch_d", "temp_ngf_forwarded", "temp_code_defaults", "patch_d_3", "cpu_temp", "cpu_d"])  # fmt: skip
def test_parameter_counts_equal_the_authors(build, count) -> None:
    with torch.device("meta"):
        assert n_params(build()) == count


def test_paper_shapes_on_the_meta_device() -> None:
    with torch.device("meta"):
        x = torch.empty(2, 80, 128, 128)
        assert TemporalUnetGenerator()(x).shape == (2, 1, 128, 128)
        assert UnetGenerator()(x).shape == (2, 1, 128, 128)
        assert PatchDiscriminator()(torch.empty(2, 81, 128, 128)).shape == (2, 1, 30, 30)


def test_temporal_stack_reduces_time_to_one_frame() -> None:
    g = TemporalUnetGenerator(ngf=4, unet_ngf=4, num_downs=5)
    convs = [m for m in g.temporal if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32]
    assert all(c.kernel_size == (4, 1, 1) and c.stride == (2, 1, 1) for c in convs)
    assert g.temporal(torch.randn(1, 1, 80, 32, 32)).shape == (1, 32, 1, 32, 32)
    out = g(torch.randn(3, 80, 32, 32))
    assert out.shape == (3, 1, 32, 32) and out.abs().max() <= 1  # tanh


@pytest.mark.parametrize("frames", [64, 127])
def test_frame_limits_accepted(frames: int) -> None:
    g = TemporalUnetGenerator(frames=frames, ngf=2, unet_ngf=2, num_downs=5)
    assert g(torch.randn(1, frames, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("frames", [63, 128, 40])
def test_frames_outside_64_to_127_refused(frames: int) -> None:
    with pytest.raises(ValueError, match=r"64 ≤ frames ≤ 127.*got %d.*resample" % frames):
        TemporalUnetGenerator(frames=frames)


def test_wrong_input_named() -> None:
    g = TemporalUnetGenerator(ngf=2, unet_ngf=2, num_downs=5)
    with pytest.raises(ValueError, match=r"needs \(B, 80, H, W\), got \(1, 70, 32, 32\)"):
        g(torch.randn(1, 70, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        g(torch.randn(1, 80, 48, 48))


def test_discriminator_returns_logits_unless_the_authors_sigmoid_is_asked() -> None:
    d = PatchDiscriminator(81, ndf=8)
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())
    torch.manual_seed(0)
    x = torch.randn(4, 81, 32, 32) * 5
    logits = d(x)
    assert logits.shape == (4, 1, 6, 6) and (logits.min() < 0 or logits.max() > 1)
    as_run = PatchDiscriminator(81, ndf=8, sigmoid_output=True)
    as_run.load_state_dict(d.state_dict())
    assert torch.allclose(as_run(x), torch.sigmoid(logits))


def test_authors_init_draws_biases_and_bn_weights_around_zero() -> None:
    torch.manual_seed(0)
    g = UnetGenerator(80, 1, num_downs=5, ngf=32, init="authors")
    bn = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.bias.abs().max() == 0 for m in bn)
    weights = torch.cat([m.weight for m in bn])
    assert weights.mean().abs() < 0.02 and 0.03 < weights.std() < 0.07
    conv = next(m for m in g.modules() if type(m) is nn.Conv2d and m.bias is not None)
    assert 0.03 < conv.bias.std() < 0.07
    with pytest.raises(ValueError, match="init must be"):
        init_weights(g, "xavier")  # type: ignore[arg-type]
