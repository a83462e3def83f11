"""Feature extractors: weight loading from local files, errors, geometry, and features against hand-run nets."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch
from monai.networks.nets import resnet10
from torch import nn

from networks.feature_extractors import (
    INCEPTION_FILENAMES,
    InceptionV3Features,
    MedicalNetFeatures,
    SegmentationEncoderFeatures,
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
