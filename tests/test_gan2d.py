"""networks.gan2d: shapes, argument checks, where spectral norm / normalisation layers sit, paper size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from networks.gan2d import Generator2D, WGANCritic2D

GEN_CASES = [  # latent, ngf, out_channels, out_size, spectral_norm, expected hidden widths (3×3 … size/2)
    (16, 4, 2, 24, False, [16, 8, 4]),
    (16, 4, 2, 48, True, [32, 16, 8, 4]),
    (8, 2, 1, 96, False, [32, 16, 8, 4, 2]),
    (8, 3, 2, 12, True, [6, 3]),
]
CRITIC_CASES = [  # in_channels, ndf, in_size, norm, kernel_size, expected feature channels
    (2, 4, 24, "instance", 5, 16),
    (2, 4, 48, "spectral", 5, 32),
    (1, 2, 96, "none", 4, 32),
    (2, 3, 24, "none", 3, 12),
]


@pytest.mark.parametrize("latent, ngf, out_ch, size, sn, widths", GEN_CASES)
def test_generator_shapes(latent, ngf, out_ch, size, sn, widths):
    g = Generator2D(latent_dim=latent, ngf=ngf, out_channels=out_ch, out_size=size, spectral_norm=sn)
    out = g(torch.randn(3, latent))
    assert out.shape == (3, out_ch, size, size)
    assert out.abs().max() <= 1.0
    assert g(torch.randn(2, latent, 1, 1)).shape == (2, out_ch, size, size)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == widths + [out_ch]


@pytest.mark.parametrize("in_ch, ndf, size, norm, kernel, feat_ch", CRITIC_CASES)
def test_critic_shapes(in_ch, ndf, size, norm, kernel, feat_ch):
    c = WGANCritic2D(in_channels=in_ch, ndf=ndf, in_size=size, norm=norm, kernel_size=kernel).eval()
    x = torch.randn(5, in_ch, size, size)
    assert c(x).shape == (5,)
    feats = c.features(x)
    assert feats.shape == (5, feat_ch, 3, 3)
    torch.testing.assert_close(c.head(feats).flatten(), c(x))


@pytest.mark.parametrize("size", [0, 3, 25, 50, 100, 97])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match="3·2\\^k"):
        Generator2D(out_size=size)
    with pytest.raises(ValueError, match="3·2\\^k"):
        WGANCritic2D(in_size=size)


@pytest.mark.parametrize("kwargs", [{"norm": "batch"}, {"norm": "layer"}, {"kernel_size": 7}, {"ndf": 0}])
def test_bad_critic_args(kwargs):
    with pytest.raises(ValueError, match="gan2d.py"):
        WGANCritic2D(in_size=24, **kwargs)


def _sn_layers(module: nn.Module) -> list[bool]:
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return [parametrize.is_parametrized(m, "weight") for m in convs]


@pytest.mark.parametrize("sn", [False, True])
def test_generator_spectral_norm_replaces_batchnorm(sn):
    g = Generator2D(latent_dim=8, ngf=2, out_size=24, spectral_norm=sn)
    assert _sn_layers(g) == [sn] * 4
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert n_bn == (0 if sn else 3)


@pytest.mark.parametrize("norm, n_instance", [("instance", 3), ("spectral", 0), ("none", 0)])
def test_critic_normalisation(norm, n_instance):
    c = WGANCritic2D(ndf=2, in_size=24, norm=norm)
    assert _sn_layers(c) == [norm == "spectral"] * 4  # every conv, the score conv included
    instance = [m for m in c.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(instance) == n_instance
    assert all(not m.affine and not m.track_running_stats for m in instance)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in c.modules())


def test_spectral_norm_bounds_each_layer():
    """After power iterations the effective weight's largest singular value is 1 (Miyato et al.)."""
    torch.manual_seed(0)
    c = WGANCritic2D(ndf=4, in_size=24, norm="spectral")
    for _ in range(100):
        c(torch.randn(2, 2, 24, 24))
    c.eval()
    for m in c.modules():
        if isinstance(m, nn.Conv2d):
            sigma = torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2)
            assert abs(sigma.item() - 1.0) < 0.02  # unnormalised layers are far from 1


def _generator_params(latent: int, ngf: int) -> int:
    """Analytic count of the paper generator: biases only where no BatchNorm follows, BN has 2 per channel."""
    widths = [16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
    total, c_in = 0, latent
    for w in widths:
        total += c_in * w * 25 + 2 * w
        c_in = w
    return total + c_in * 2 * 25 + 2


@pytest.mark.parametrize("latent", [100, 128])
def test_paper_generator_size(latent):
    with torch.device("meta"):
        g = Generator2D(latent_dim=latent, ngf=96, out_size=96)
    n = sum(p.numel() for p in g.parameters())
    assert n == _generator_params(latent, 96)
    assert abs(n - 43e6) / 43e6 < 0.03  # SPEC: ≈43 M (43.0 M with latent 100, 44.1 M with 128)


def test_paper_critic_widths():
    with torch.device("meta"):
        c = WGANCritic2D(ndf=96, in_size=96)
    convs = [m for m in c.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [96, 192, 384, 768, 1536, 1]
    assert convs[-1].kernel_size == (3, 3)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_critic_per_sample_gradients_under_opacus(norm):
    """DP-SGD needs per-sample gradients: opacus' must equal each sample's own gradient."""
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(0)
    critic = WGANCritic2D(ndf=2, in_size=12, norm=norm, kernel_size=4)
    x = torch.randn(3, 2, 12, 12)
    expected = []
    for i in range(3):
        critic.zero_grad()
        critic(x[i : i + 1]).sum().backward()
        expected.append([p.grad.clone() for p in critic.parameters()])
    gsm = opacus.GradSampleModule(critic, loss_reduction="sum")
    gsm(x).sum().backward()
    for j, p in enumerate(critic.parameters()):
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], expected[i][j], rtol=1e-4, atol=1e-6)
