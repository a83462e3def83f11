"""Feature extractors: weight loading from local files, errors, geometry, and features against hand-run nets."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from monai.networks.nets import resnet10
from torch import nn

from networks.feature_extractors import (
    INCEPTION_FILENAMES,
    InceptionV3Features,
    MedicalNetFeatures,
    SegmentationEncoderFeatures,
    medicalnet_input_mapping,
)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-6)


# ---- Inception: only the error paths can run here (no torchvision / torch-fidelity) ----------------
def test_inception_missing_file_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        InceptionV3Features(weights_path=str(tmp_path / "nope.pth"))


def test_inception_missing_in_hub_cache_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        InceptionV3Features()
    assert INCEPTION_FILENAMES[0] in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)


def test_inception_missing_package_says_pip_extra(tmp_path, monkeypatch):
    weights = tmp_path / INCEPTION_FILENAMES[0]
    weights.write_bytes(b"not really weights")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails whatever is installed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ImportError, match=r"pip install tofgan\[inception\]"):
        InceptionV3Features(weights_path=str(weights))


# ---- MedicalNet ------------------------------------------------------------------------------------
def _monai_resnet10() -> nn.Module:
    return resnet10(spatial_dims=3, n_input_channels=1, shortcut_type="B", bias_downsample=False,
                    conv1_t_stride=2, feed_forward=False)


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory) -> tuple[str, dict]:
    """A checkpoint in MedicalNet's format: {'state_dict': {'module.'+key: ...}} plus a conv_seg head."""
    torch.manual_seed(0)
    state = _monai_resnet10().state_dict()
    stored = {f"module.{k}": v for k, v in state.items()}
    stored["module.conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)
    path = tmp_path_factory.mktemp("mednet") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": stored}, path)
    return str(path), state


def test_medicalnet_loads_weights_and_hash(medicalnet_file):
    path, state = medicalnet_file
    ext = MedicalNetFeatures(path, depth=10)
    assert torch.equal(ext.net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    with open(path, "rb") as fh:
        assert ext.weights_sha256 == hashlib.sha256(fh.read()).hexdigest()
    assert ext.num_features == 512 and not any(p.requires_grad for p in ext.parameters())


def test_medicalnet_features_equal_hand_run_net(medicalnet_file):
    """With MONAI geometry the extractor must equal the plain MONAI net on z-scored input."""
    path, state = medicalnet_file
    ext = MedicalNetFeatures(path, medicalnet_geometry=False)
    net = _monai_resnet10().eval()
    net.load_state_dict(state)
    x = torch.randn(2, 2, 16, 16, 8)  # image + label channels; only channel 0 is used
    with torch.no_grad():
        assert torch.allclose(ext(x), net(_zscore(x[:, :1])), atol=1e-5)


def test_medicalnet_geometry_and_2d_input(medicalnet_file):
    path, _ = medicalnet_file
    ext = MedicalNetFeatures(path)
    shapes = []
    ext.net.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        f3 = ext(torch.randn(3, 1, 32, 32, 16))
        f2 = ext(torch.randn(2, 1, 32, 32))
    # MedicalNet: conv1 /2, maxpool /2, layer2 /2, layers 3-4 dilated at stride 1 -> /8 overall
    assert shapes[0] == (3, 512, 4, 4, 2) and shapes[1] == (2, 512, 4, 4, 1)
    assert f3.shape == (3, 512) and f2.shape == (2, 512) and torch.isfinite(f2).all()


def test_medicalnet_errors(tmp_path, medicalnet_file):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        MedicalNetFeatures(str(tmp_path / "absent.pth"))
    _, state = medicalnet_file
    broken = {f"module.{k}": v for k, v in state.items() if not k.startswith("layer4.0.conv2")}
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth.*layer4.0.conv2"):
        MedicalNetFeatures(str(tmp_path / "broken.pth"))


# ---- segmentation encoder --------------------------------------------------------------------------
class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.dec = nn.Conv2d(8, 1, 1)
        self.decoder_calls = 0

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.enc1(x)
        return [a, self.enc2(a)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.decoder_calls += 1
        return nn.functional.interpolate(self.dec(self.encode(x)[-1]), scale_factor=2)


@pytest.fixture
def seg_ckpt(tmp_path) -> tuple[str, TinySeg]:
    torch.manual_seed(1)
    trained = TinySeg()
    ckpt = {"state_dict": {f"net.{k}": v for k, v in trained.state_dict().items()},
            "hyper_parameters": {"lr": 1e-4}, "epoch": 3}
    path = tmp_path / "seg.ckpt"
    torch.save(ckpt, path)
    return str(path), trained


def _expected(trained: TinySeg, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return trained.enc2(trained.enc1(_zscore(x[:, :1]))).mean(dim=(2, 3))


def test_segmentation_encoder_hook(seg_ckpt):
    path, trained = seg_ckpt
    net = TinySeg()  # fresh init: the checkpoint must overwrite it
    ext = SegmentationEncoderFeatures(path, net, layer_name="enc2")
    x = torch.randn(5, 2, 16, 16)
    feats = ext(x)
    assert ext.num_features == 8 and feats.shape == (5, 8)
    assert torch.allclose(feats, _expected(trained, x), atol=1e-6)
    assert net.decoder_calls == 1 and len(net.enc2._forward_hooks) == 0  # hook removed after use
    with open(path, "rb") as fh:
        assert ext.weights_sha256 == hashlib.sha256(fh.read()).hexdigest()


def test_segmentation_encoder_attr_and_plain_state_dict(tmp_path, seg_ckpt):
    _, trained = seg_ckpt
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    ext = SegmentationEncoderFeatures(str(tmp_path / "plain.pt"), TinySeg(), encoder_attr="encode", num_features=8)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(ext(x), _expected(trained, x), atol=1e-6)


def test_segmentation_encoder_errors(tmp_path, seg_ckpt):
    path, _ = seg_ckpt
    with pytest.raises(ValueError, match="exactly one"):
        SegmentationEncoderFeatures(path, TinySeg())
    with pytest.raises(FileNotFoundError, match="gone.ckpt"):
        SegmentationEncoderFeatures(str(tmp_path / "gone.ckpt"), TinySeg(), layer_name="enc2")
    other = nn.Sequential(nn.Conv2d(1, 3, 3))
    with pytest.raises(ValueError, match="seg.ckpt"):
        SegmentationEncoderFeatures(path, other, layer_name="0")


def test_segmentation_encoder_on_half_unet(tmp_path):
    unet2d = pytest.importorskip("networks.unet2d")
    net = unet2d.HalfUNet2D(features=(4, 8, 16))
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "u.ckpt")
    ext = SegmentationEncoderFeatures(str(tmp_path / "u.ckpt"), unet2d.HalfUNet2D(features=(4, 8, 16)),
                                      layer_name="encoders.2")
    assert ext.num_features == 16 and ext(torch.randn(2, 2, 16, 16)).shape == (2, 16)


# ---- MedicalNet as the 3D paper ran it: Tencent file format, dilated geometry, nonzero input mapping -------
def _bn(x: torch.Tensor, s: dict, k: str) -> torch.Tensor:
    return nn.functional.batch_norm(x, s[f"{k}.running_mean"], s[f"{k}.running_var"], s[f"{k}.weight"],
                                    s[f"{k}.bias"], False, 0.0, 1e-5)


def medicalnet_reference(s: dict, x: torch.Tensor) -> torch.Tensor:
    """MedicalNet's resnet10 (Tencent `models/resnet.py`) written out with functional ops: conv1 7³ stride 2,
    maxpool 3/2, layer2 stride 2, layer3 dilation 2 and layer4 dilation 4 at stride 1, shortcut B, average pool."""
    f = nn.functional
    x = f.relu(_bn(f.conv3d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    x = f.max_pool3d(x, 3, 2, 1)
    for layer, stride, dil in (("layer1", 1, 1), ("layer2", 2, 1), ("layer3", 1, 2), ("layer4", 1, 4)):
        k = f"{layer}.0"
        out = f.relu(_bn(f.conv3d(x, s[f"{k}.conv1.weight"], stride=stride, padding=dil, dilation=dil), s, f"{k}.bn1"))
        out = _bn(f.conv3d(out, s[f"{k}.conv2.weight"], padding=dil, dilation=dil), s, f"{k}.bn2")
        if f"{k}.downsample.0.weight" in s:
            x = _bn(f.conv3d(x, s[f"{k}.downsample.0.weight"], stride=stride), s, f"{k}.downsample.1")
        x = f.relu(out + x)
    return x.mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def tencent_file(tmp_path_factory) -> tuple[str, dict]:
    """The released file's shape: legacy (non-zip) serialisation, {'state_dict': {'module.' + key}}, a conv_seg
    head, and BatchNorm statistics that are not the identity."""
    torch.manual_seed(3)
    state = _monai_resnet10().state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = torch.rand_like(v) + 0.5
        elif k.endswith(("running_mean", "bn1.bias", "bn2.bias")):
            state[k] = torch.randn_like(v) * 0.1
    stored = {f"module.{k}": v for k, v in state.items()}
    stored["module.conv_seg.1.weight"] = torch.zeros(2, 32, 1, 1, 1)
    path = tmp_path_factory.mktemp("tencent") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": stored}, path, _use_new_zipfile_serialization=False)
    return str(path), state


def test_medicalnet_equals_the_dilated_reference_and_monai_geometry_does_not(tencent_file):
    path, state = tencent_file
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        ref = medicalnet_reference(state, _zscore(x))
        ours = MedicalNetFeatures(path)(x)
        monai = MedicalNetFeatures(path, medicalnet_geometry=False)(x)
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (monai - ref).abs().max() > 1e-3  # MONAI's strided layers 3-4 are another network for these weights


def numpy_nonzero_mapping(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The authors' `__itensity_normalize_one_volume__` after their 0-255 scaling, foreground part only."""
    v = (patch - patch.min()) / (patch.max() - patch.min()) * 255.0
    fg = v > 0
    return fg, (v - v[fg].mean()) / v[fg].std()


def test_medicalnet_nonzero_mapping_matches_the_paper_and_is_seeded(tencent_file):
    path, _ = tencent_file
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 16, 16, 8, generator=g) * 2 - 1
    x[0, 0, :6] = -1.0  # a skull-stripped-like background: the minimum, which becomes 0, then noise
    mapped = medicalnet_input_mapping(x[:, :1], seed=7)
    for i in range(3):
        fg, expected = numpy_nonzero_mapping(x[i, 0].double().numpy())
        np.testing.assert_allclose(mapped[i, 0].numpy()[fg], expected[fg], atol=1e-4)
        assert (~fg).sum() >= 1  # the minimum voxel at least
    noise = mapped[0, 0, :6].flatten()
    assert noise.numel() == 6 * 16 * 8 and abs(float(noise.mean())) < 0.15 and abs(float(noise.std()) - 1) < 0.15
    # the same patch draws the same noise alone, in a batch or in another order; another seed draws other noise
    torch.testing.assert_close(medicalnet_input_mapping(x[:1, :1], seed=7), mapped[:1], rtol=0, atol=0)
    torch.testing.assert_close(medicalnet_input_mapping(x[[2, 0], :1], seed=7)[1], mapped[0], rtol=0, atol=0)
    other = medicalnet_input_mapping(x[:1, :1], seed=8)
    assert not torch.equal(other[0, 0, :6], mapped[0, 0, :6]) and torch.equal(other[0, 0, 6:], mapped[0, 0, 6:])
    ext = MedicalNetFeatures(path, normalisation="medicalnet_nonzero", noise_seed=7)
    assert "voxels > 0" in ext.input_mapping and "noise_seed 7" in ext.input_mapping
    with torch.no_grad():
        torch.testing.assert_close(ext(x), ext.net(mapped).float())
        torch.testing.assert_close(ext(x[1:2]), ext(x)[1:2])


def test_medicalnet_default_location_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        MedicalNetFeatures()
    assert "resnet_10_23dataset.pth" in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)
