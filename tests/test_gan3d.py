"""3D networks of the 3D paper (networks/gan3d.py): parameter counts of the paper configs on the meta device,
shapes 2D and 3D, the folded (sub-pixel) generator equal to nearest+conv, init_args round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.gan_base import build_network, network_spec
from networks.gan2d import Generator2D, WGANCritic2D
from networks.gan3d import FOLD, Generator3D, UpConv3d, WGANCritic3D, fold_nearest_conv


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- paper parameter counts
@pytest.mark.parametrize("width, g_total, d_total", [(512, 139_916_994, 4_780_353), (1024, 289_123_714, 18_850_433)])
def test_paper_parameter_counts_on_meta(width, g_total, d_total):
    """The authors' counts (notes/3d-paper.md A1): G 140 M / 289 M, D 4.8 M / 18.9 M, SN adds no parameters."""
    with torch.device("meta"):
        g = Generator3D(ngf=width)
        upsampled = Generator3D(ngf=width, upsample="subpixel")
        critics = [WGANCritic3D(ndf=width, norm=norm) for norm in ("instance", "spectral")]
    assert n_params(g) == n_params(upsampled) == g_total
    assert n_params(g.fc) == 128 * width * 16 * 16 * 8 + width * 16 * 16 * 8  # 135,266,304 at 512
    assert [n_params(d) for d in critics] == [d_total, d_total]
    assert critics[0].head.in_features == width * 8 * 4 * 4 * 2  # 8×8×4 maps after 4 stride-2 convs


# --------------------------------------------------------------------------- shapes, 2D and 3D
SHAPES = [  # (generator, critic, expected sample shape) at tiny widths, as the CPU configs and tests build them
    (lambda: Generator2D(8, 4, out_size=24), lambda: WGANCritic2D(ndf=4, in_size=24), (2, 24, 24)),
    (lambda: Generator3D(8, 16, out_size=(32, 32, 16)), lambda: WGANCritic3D(ndf=16, in_size=(32, 32, 16)), (2, 32, 32, 16)),
    (lambda: Generator3D(8, 16, out_size=(32, 32, 8), upsample="subpixel"),
     lambda: WGANCritic3D(ndf=16, in_size=(32, 32, 8), norm="spectral"), (2, 32, 32, 8)),
]  # fmt: skip


@pytest.mark.parametrize("make_g, make_d, shape", SHAPES, ids=["2d", "3d", "3d_subpixel_sn"])
def test_shapes_and_ranges(make_g, make_d, shape):
    torch.manual_seed(0)
    g, d = make_g(), make_d()
    fake = g(torch.randn(3, 8))
    assert fake.shape == (3, *shape) and fake.abs().max() <= 1
    scores = d(fake)
    assert scores.shape == (3,)
    scores.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in g.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"out_size": (32, 32, 12)}, "multiples of 8"), ({"out_size": (32, 32)}, "multiples of 8"),
    ({"ngf": 12}, "multiple of 8"), ({"upsample": "bilinear"}, "upsample"), ({"init": "xavier"}, "init"),
])  # fmt: skip
def test_generator_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Generator3D(**{"latent_dim": 8, "ngf": 16, "out_size": (32, 32, 16), **kwargs})


def test_critic_rejects_bad_settings():
    with pytest.raises(ValueError, match="norm"):
        WGANCritic3D(ndf=16, in_size=(32, 32, 16), norm="batch")
    with pytest.raises(ValueError, match="multiples of 8"):
        WGANCritic3D(ndf=16, in_size=(30, 32, 16))


# --------------------------------------------------------------------------- folded generator
def test_fold_matrix_is_nearest_then_k3_per_axis():
    """1D check of the fold, independent of the 3D einsum: conv1d(up(x), w) = conv_transpose1d(x, FOLD·w)."""
    x, w = torch.randn(1, 1, 7, dtype=torch.float64), torch.randn(1, 1, 3, dtype=torch.float64)
    up = torch.nn.functional.conv1d(x.repeat_interleave(2, -1), w, padding=1)
    folded = torch.nn.functional.conv_transpose1d(x, (FOLD.double() @ w[0, 0]).reshape(1, 1, 4), stride=2, padding=1)
    torch.testing.assert_close(folded, up, rtol=0, atol=1e-12)
    assert fold_nearest_conv(torch.randn(5, 3, 3, 3, 3)).shape == (3, 5, 4, 4, 4)


@pytest.mark.parametrize("train", [True, False], ids=["train_bn", "eval_bn"])
def test_subpixel_generator_equals_nearest_in_float64(train):
    """Same parameters (state_dict), same output and same gradients (parameters and z) to 1e-10 in float64."""
    torch.manual_seed(0)
    nearest = Generator3D(8, 16, out_size=(32, 32, 16), init="authors").double().train(train)
    folded = Generator3D(8, 16, out_size=(32, 32, 16), upsample="subpixel").double().train(train)
    folded.load_state_dict(nearest.state_dict())  # strict: the keys are the same
    if not train:  # non-trivial running statistics
        for m in (*nearest.modules(), *folded.modules()):
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.fill_(0.1), m.running_var.fill_(2.0)
    z = torch.randn(3, 8, dtype=torch.float64)
    weights = torch.randn(3, 2, 32, 32, 16, dtype=torch.float64)
    outs, grads = [], []
    for net in (nearest, folded):
        zz = z.clone().requires_grad_(True)
        out = net(zz)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append([zz.grad] + [p.grad for p in net.parameters()])
    assert (outs[0] - outs[1]).abs().max() < 1e-10
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10
    assert outs[0].std() > 1e-3  # a non-trivial function was compared


def test_upconv_modes_share_state_dict_keys():
    assert UpConv3d(4, 2, "nearest").state_dict().keys() == UpConv3d(4, 2, "subpixel").state_dict().keys()


# --------------------------------------------------------------------------- checkpoints and init
@pytest.mark.parametrize("net", [Generator3D(8, 16, out_size=(32, 32, 8), upsample="subpixel", init="authors"),
                                 WGANCritic3D(ndf=16, in_size=(32, 32, 8), norm="spectral", init="authors")],
                         ids=["generator", "critic"])  # fmt: skip
def test_rebuilt_from_init_args(net):
    """GANModule stores {class_path, init_args}; the rebuilt network takes the state_dict strictly."""
    rebuilt = build_network(network_spec(net, "net"), "net")
    assert type(rebuilt) is type(net) and rebuilt.init_args == net.init_args
    rebuilt.load_state_dict(net.state_dict())


def test_authors_init():
    """Conv weights and BatchNorm weights ~ N(0, 0.05) (BN mean 0, not 1), BN bias 0."""
    torch.manual_seed(0)
    g = Generator3D(8, 64, out_size=(16, 16, 8), init="authors")
    conv_w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.Conv3d)])
    bn_w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.BatchNorm3d)])
    assert abs(conv_w.std().item() - 0.05) < 0.005 and abs(bn_w.mean().item()) < 0.02
    assert all(torch.all(m.bias == 0) for m in g.modules() if isinstance(m, nn.BatchNorm3d))
    d = WGANCritic3D(ndf=64, in_size=(16, 16, 8), norm="spectral", init="authors")
    original = d.conv_stack[2].parametrizations.weight.original
    assert abs(original.std().item() - 0.05) < 0.01


# --------------------------------------------------------------------------- the paper's 3D patch grid
def test_paper_patch_grid_matches_the_authors_starts():
    """configs/data/pegasus_gan3d.yaml on a 312×384×127 PEGASUS volume: 3×3×2 = 18 grid patches whose starts are
    the authors' 0/92/184, 0/128/256 and 0/63, + 32 vessel-centred = 50 per patient."""
    import yaml

    from datamodules.patches import PatchSettings, grid_centres
    from workflows.compose import CONFIGS

    data = yaml.safe_load((CONFIGS / "data" / "pegasus_gan3d.yaml").read_text())["data"]["init_args"]
    settings = PatchSettings(data["patch_size"], data["n_vessel"], data["n_random"], data["grid"])
    centres = grid_centres((312, 384, 127), settings.cut_size, settings.grid)
    starts = [sorted(set((centres[:, axis] - settings.cut_size[axis] // 2).tolist())) for axis in range(3)]
    assert starts == [[0, 92, 184], [0, 128, 256], [0, 63]]
    assert len(centres) + settings.n_vessel + settings.n_random == 50 and data["n_train"] * 50 == 2350
