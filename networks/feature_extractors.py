"""Frozen feature extractors for FID / PRD / memorisation, with a recorded identity.

A feature-space score is meaningless without knowing which network, which weights and which input
mapping produced the features, so every extractor carries `name`, `weights_sha256` and `input_mapping`
and the metrics copy them into every result. All extractors take the GAN's tensors as they are:
`(N, C, H, W)` or `(N, C, H, W, D)`, image channel `channel` (0 = image of an image+label pair).
Nothing is downloaded: weights come from local files (our machines have no internet).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

#: torch-fidelity's and pytorch-fid's names of the same TF-ported FID Inception weights (sha256 6726825d…).
INCEPTION_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file or Lightning checkpoint, read as data only (never unpickling code)."""
    from lightning_modules.checkpoints import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path, what)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: no state_dict found")
    return state


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Every network weight must come from the file: a silently half-initialised backbone gives
    plausible-looking but meaningless scores."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{what} {path} does not fit {type(net).__name__}: {err}") from err
    if missing or unexpected:
        raise ValueError(f"{what} {path} does not fit {type(net).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample z-score: the segmentation nets and MedicalNet were trained on z-scored inputs."""
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + eps)


class FeatureExtractor(nn.Module):
    """Common interface: `forward(x) -> (N, num_features)` float32, always frozen and in eval mode."""

    name: str = "feature_extractor"
    weights_sha256: str = ""
    input_mapping: str = ""
    num_features: int = 0

    def __init__(self, channel: int | None = 0) -> None:
        super().__init__()
        self.channel = channel

    @property
    def extractor_id(self) -> str:
        """Cache key for real statistics: the same name with other weights must never share a cache file."""
        return f"{self.name}-{self.weights_sha256[:16]}"

    def _identify(self, name: str, weights: Path, num_features: int, input_mapping: str) -> None:
        """Record the identity every score carries, then freeze."""
        self.name, self.num_features, self.input_mapping = name, int(num_features), input_mapping
        self.weights_sha256 = sha256_file(weights)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        # A Lightning `model.train()` must not switch BatchNorm to batch statistics in a frozen backbone.
        return super().train(False)

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (4, 5):
            raise ValueError(f"{self.name}: expected (N, C, H, W) or (N, C, H, W, D), got shape {tuple(x.shape)}")
        if self.channel is None:
            return x
        if not 0 <= self.channel < x.shape[1]:
            raise ValueError(f"{self.name}: channel {self.channel} out of range for input with {x.shape[1]} channels")
        return x[:, self.channel : self.channel + 1]


class InceptionV3Features(FeatureExtractor):
    """Inception-v3 pool3 (2048-D), the FID network of the 2D papers, via torch-fidelity (TF-exact port).

    Input mapping: image channel → clamp `value_range` (default [-1, 1]) → [0, 255] rounded to uint8 →
    repeated to 3 channels; torch-fidelity then resizes to 299×299 with TF1-compatible bilinear
    interpolation and scales (x − 128) / 128, exactly as the TF FID code did. 2D only.

    Weights: `weights_path`, or else the torch hub cache (`$TORCH_HOME/hub/checkpoints/`) under one of
    `INCEPTION_FILENAMES` (torch-fidelity and pytorch-fid host the same file under two names).
    """

    def __init__(
        self,
        weights_path: str | None = None,
        channel: int = 0,
        value_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__(channel)
        path = self._resolve_weights(weights_path)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ImportError(
                "InceptionV3Features needs torch-fidelity (and torchvision): pip install tofgan[inception]"
            ) from err
        _read_state_dict(path, "Inception weights file")  # data only, before torch-fidelity's own torch.load
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self._identify("inception_v3_pool3", path, 2048,
                       f"channel {channel}; clamp {self.value_range} -> [0,255] uint8; grey->3 channels; "
                       "torch-fidelity TF1 bilinear resize to 299; (x-128)/128")

    @staticmethod
    def _resolve_weights(weights_path: str | None) -> Path:
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Inception weights file {path} not found; download {INCEPTION_FILENAMES[0]} from the "
                    "torch-fidelity v0.2.0 release and pass its path as weights_path"
                )
            return path
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        for fname in INCEPTION_FILENAMES:
            if (hub / fname).is_file():
                return hub / fname
        raise FileNotFoundError(
            f"Inception weights not found: put {INCEPTION_FILENAMES[0]} (or {INCEPTION_FILENAMES[1]}) into {hub} "
            "or pass weights_path; this machine cannot download them"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: 2D input (N, C, H, W) only, got {tuple(x.shape)}; use MedicalNetFeatures for 3D")
        lo, hi = self.value_range
        x = self._select(x).float()
        x = ((x - lo) / (hi - lo)).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        return self.net(x.expand(-1, 3, -1, -1).contiguous())[0].float()


class MedicalNetFeatures(FeatureExtractor):
    """MedicalNet ResNet-10/50 (Chen et al. 2019) average-pooled features, as the 3D GAN paper's FID.

    Built with MONAI's ResNet (shortcut B, no downsample bias, conv1 stride 2, no FC head) and, by
    default, patched to MedicalNet's own geometry (layer3/layer4 stride 1 with dilation 2/4 instead of
    MONAI's stride 2), so the loaded weights see the receptive fields they were trained with.
    Input mapping (`normalisation`), applied alike to real and synthetic patches:
      * "zscore": per-sample z-score over all voxels;
      * "medicalnet_nonzero": the 3D paper's (`medicalnet_input_mapping`): per-sample min–max to [0, 255]
        (the authors' scaling of generated patches), mean and std of the voxels > 0, voxels == 0 replaced
        by N(0, 1) noise; the noise is seeded by `noise_seed` and the patch's own bytes (the authors drew it
        unseeded), so a patch gets the same features in any batch;
      * "none".
    Axes are used as stored ((x, y, z), the order MedicalNet's loader fed nibabel arrays in). A 2D patch
    gets a singleton depth axis, so only the central plane of each 3D kernel touches data.
    Weights: `weights_path`, or else `<torch hub dir>/checkpoints/resnet_<depth>_23dataset.pth`.
    """

    def __init__(
        self,
        weights_path: str | None = None,
        depth: Literal[10, 50] = 10,
        channel: int = 0,
        normalisation: Literal["zscore", "medicalnet_nonzero", "none"] = "zscore",
        medicalnet_geometry: bool = True,
        noise_seed: int = 0,
    ) -> None:
        super().__init__(channel)
        from monai.networks.nets import resnet10, resnet50

        if depth not in (10, 50):
            raise ValueError(f"MedicalNetFeatures: depth must be 10 or 50, got {depth}")
        if normalisation not in ("zscore", "medicalnet_nonzero", "none"):
            raise ValueError(f"MedicalNetFeatures: unknown normalisation {normalisation!r}")
        path = self._resolve_weights(weights_path, depth)
        builder = resnet10 if depth == 10 else resnet50
        self.net = builder(spatial_dims=3, n_input_channels=1, shortcut_type="B", bias_downsample=False,
                           conv1_t_stride=2, feed_forward=False)
        self._load(path)
        for layer, dilation in ((self.net.layer3, 2), (self.net.layer4, 4)) if medicalnet_geometry else ():
            self._dilate(layer, dilation)
        self.normalisation, self.noise_seed = normalisation, int(noise_seed)
        mapping = (f"per-sample min-max to [0,255]; mean/std of voxels > 0; voxels == 0 -> N(0,1) noise seeded by "
                   f"noise_seed {self.noise_seed} and the patch bytes" if normalisation == "medicalnet_nonzero"
                   else f"per-sample {normalisation}")
        self._identify(f"medicalnet_resnet{depth}" + ("" if medicalnet_geometry else "_monai_geometry"), path,
                       512 if depth == 10 else 2048,
                       f"channel {channel}; {mapping}; 2D -> singleton depth; axes (x,y,z) as stored; "
                       "global average pool of layer4")

    @staticmethod
    def _resolve_weights(weights_path: str | None, depth: int) -> Path:
        fname = f"resnet_{depth}_23dataset.pth"
        source = (f"github.com/Tencent/MedicalNet or huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth}; "
                  "this machine cannot download it")
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"MedicalNet weights file {path} not found; get {fname} (or resnet_{depth}.pth) "
                                        f"from {source}, and pass its path as weights_path")
            return path
        path = Path(torch.hub.get_dir()) / "checkpoints" / fname
        if not path.is_file():
            raise FileNotFoundError(f"MedicalNet weights not found: put {fname} into {path.parent} or pass weights_path "
                                    f"(get it from {source})")
        return path

    def _load(self, path: Path) -> None:
        state = _read_state_dict(path, "MedicalNet weights file")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(("conv_seg.", "fc."))}  # task heads
        _load_strict(self.net, state, path, "MedicalNet weights file")

    @staticmethod
    def _dilate(layer: nn.Module, dilation: int) -> None:
        for m in layer.modules():
            if isinstance(m, nn.Conv3d):
                m.stride = (1, 1, 1)
                if m.kernel_size[0] == 3:
                    m.dilation = (dilation,) * 3
                    m.padding = (dilation,) * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._select(x).float()
        if x.ndim == 4:
            x = x.unsqueeze(-1)
        if self.normalisation == "zscore":
            x = _zscore(x)
        elif self.normalisation == "medicalnet_nonzero":
            x = medicalnet_input_mapping(x, self.noise_seed)
        return self.net(x).float()


def _patch_seed(patch: torch.Tensor, seed: int) -> int:
    """A seed from `seed` and the patch's bytes: the same patch draws the same noise in any batch or order."""
    digest = hashlib.sha256(patch.detach().cpu().float().contiguous().numpy().tobytes()).digest()
    return (int.from_bytes(digest[:8], "little") ^ int(seed)) & ((1 << 63) - 1)


def medicalnet_input_mapping(x: torch.Tensor, seed: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """The 3D paper's MedicalNet input (its `evaluation/MedicalNet` code), per sample of (N, 1, ...):
    min–max to [0, 255]; mean and std over the voxels > 0; (x − mean) / std there; voxels == 0 → N(0, 1) noise
    (seeded per patch, see `_patch_seed`). A constant patch maps to all noise."""
    out = torch.empty_like(x, dtype=torch.float32)
    for i in range(x.shape[0]):
        v = x[i].float()
        lo, hi = v.min(), v.max()
        v = (v - lo) / (hi - lo).clamp_min(eps) * 255.0
        fg = v > 0
        gen = torch.Generator().manual_seed(_patch_seed(x[i], seed))
        noise = torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.device)
        if fg.any():
            vals = v[fg]
            std = vals.std(unbiased=False) if vals.numel() > 1 else vals.new_tensor(0.0)
            v = torch.where(fg, (v - vals.mean()) / (std + eps), noise)
        else:
            v = noise
        out[i] = v
    return out


class _StopForward(Exception):
    """Raised from the hook: the decoder is never run, only the encoder's cost is paid."""


def _resolve_attr(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


class SegmentationEncoderFeatures(FeatureExtractor):
    """Domain features needing no download: the deepest encoder features of a segmentation network
    trained on the real training patients, global-average-pooled over space (2D or 3D alike).

    `checkpoint` is a Lightning checkpoint (its `state_dict`, module prefix found automatically or given
    as `state_dict_prefix`) or a plain state_dict of `net`. Features come either from calling
    `encoder_attr` (dotted attribute of `net`; a tensor or a sequence whose last item is the deepest map)
    or from a forward hook on the submodule `layer_name` (e.g. "encoders.4" for `HalfUNet2D`).
    Input mapping: image channel → per-sample z-score (as the segmentation module normalises its input).
    The checkpoint is read as data only (`lightning_modules.checkpoints.safe_load`): a file that pickles
    Python objects (a module built outside `tofgan fit` pickles its net into the hyper-parameters) is refused.
    """

    def __init__(
        self,
        checkpoint: str,
        net: nn.Module,
        encoder_attr: str | None = None,
        layer_name: str | None = None,
        channel: int = 0,
        normalisation: Literal["zscore", "none"] = "zscore",
        num_features: int | None = None,
        state_dict_prefix: str | None = None,
    ) -> None:
        super().__init__(channel)
        if (encoder_attr is None) == (layer_name is None):
            raise ValueError("SegmentationEncoderFeatures: give exactly one of encoder_attr or layer_name")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"segmentation checkpoint {path} not found")
        self.net = net
        self._load(path, state_dict_prefix)
        self.encoder_attr, self.layer_name = encoder_attr, layer_name
        self.normalisation = normalisation
        where = str(encoder_attr or layer_name)
        self._identify(f"segmentation_encoder_{type(net).__name__}_{where}", path,
                       num_features or self._guess_num_features(where),
                       f"channel {channel}; per-sample {normalisation}; {where} -> global average pool")

    def _load(self, path: Path, prefix: str | None) -> None:
        state = _read_state_dict(path, "segmentation checkpoint")
        wanted = self.net.state_dict()
        prefix = self._find_prefix(state, wanted) if prefix is None else prefix
        if prefix is None:
            raise ValueError(
                f"segmentation checkpoint {path}: no key prefix makes its state_dict fit {type(self.net).__name__} "
                f"(first wanted keys {list(wanted)[:3]}, first stored {list(state)[:3]})"
            )
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        _load_strict(self.net, sub, path, f"segmentation checkpoint (prefix {prefix!r})")

    @staticmethod
    def _find_prefix(state: dict, wanted: dict[str, torch.Tensor]) -> str | None:
        """The prefix under which exactly `wanted`'s keys and shapes are stored (e.g. "net." in Lightning)."""
        anchor = next(iter(wanted), None)
        if anchor is None:
            return ""
        for key in state:
            if key.endswith(anchor):
                prefix = key[: len(key) - len(anchor)]
                sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                if set(sub) == set(wanted) and all(
                    getattr(sub[k], "shape", None) == v.shape for k, v in wanted.items()
                ):
                    return prefix
        return None

    def _guess_num_features(self, where: str) -> int:
        """Out-channels of the last conv inside the chosen module (a guess; checked at every forward)."""
        target = _resolve_attr(self.net, where)
        convs = [m for m in target.modules() if isinstance(m, nn.modules.conv._ConvNd)] if isinstance(target, nn.Module) else []
        if not convs:
            raise ValueError(f"SegmentationEncoderFeatures: cannot infer num_features of {where}; pass num_features")
        return int(convs[-1].out_channels)

    def _deepest(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder_attr is not None:
            encoder: Callable = _resolve_attr(self.net, self.encoder_attr)  # type: ignore[assignment]
            out = encoder(x)
            return out[-1] if isinstance(out, (list, tuple)) else out
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inp: object, output: torch.Tensor) -> None:
            captured.append(output)
            raise _StopForward

        handle = self.net.get_submodule(self.layer_name).register_forward_hook(hook)
        try:
            self.net(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"{self.name}: layer {self.layer_name} was never called in forward")
        return captured[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._select(x).float()
        if self.normalisation == "zscore":
            x = _zscore(x)
        fmap = self._deepest(x)
        feats = fmap.flatten(2).mean(-1).float()
        if feats.shape[1] != self.num_features:
            raise ValueError(f"{self.name}: got {feats.shape[1]} features, expected num_features={self.num_features}")
        return feats
