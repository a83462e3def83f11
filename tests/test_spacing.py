"""Resampling to a configured spacing (datamodules.preprocess): round trips to the native grid, patches and
inference at the target spacing, predictions and metrics back on the native grid, and the trained spacing kept
in the U-Net checkpoint with a warning when the net meets another spacing."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from datamodules.patches import PatchSettings
from datamodules.preprocess import PreparedPatchSettings, VolumePrep, resample_to_grid, resample_to_spacing
from datamodules.segmentation_data import SegmentationDataModule
from lightning_modules.segmentation import SegmentationModule
from networks.unet2d import HalfUNet2D
from tests.fixtures_cohort import TINY_SPACING, tiny_affine, tiny_patient, write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*", "ignore:.*sync_dist.*",
                                        "ignore:.*does not have many workers.*", "ignore:.*log_every_n_steps.*")
FINE = (0.25, 0.25, 0.35)


def _rotated_affine() -> np.ndarray:
    """An oblique scan: 20° about z, so orientation handling is exercised, not only the diagonal case."""
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(TINY_SPACING)
    aff[:3, 3] = [-10.0, -12.0, 5.0]
    return aff


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("affine", [tiny_affine(), _rotated_affine()], ids=["axis-aligned", "oblique"])
def test_label_round_trips_to_native_grid(affine: np.ndarray) -> None:
    _, label, _ = tiny_patient()
    fine, fine_affine = resample_to_spacing(label, affine, FINE, "nearest")
    assert fine.shape[0] > 1.9 * label.shape[0]  # really on another grid
    assert np.allclose(np.linalg.norm(fine_affine[:3, :3], axis=0), FINE)
    back = resample_to_grid(torch.from_numpy(fine)[None], torch.as_tensor(fine_affine), torch.as_tensor(affine),
                            label.shape, "nearest")[0].numpy()
    assert back.shape == label.shape
    assert _dsc(back > 0.5, label) == 1.0 and np.array_equal(back.astype(np.uint8), label)


def _smooth(world: np.ndarray) -> np.ndarray:
    """A smooth field (wavelengths ≥ 6 mm ≫ voxel size) of world coordinates (…, 3) in mm."""
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    return 100 + 30 * np.sin(2 * np.pi * x / 8.0) * np.cos(2 * np.pi * y / 10.0) + 20 * np.sin(2 * np.pi * z / 6.0)


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("target", [FINE, (0.3, 0.3, 0.3), (0.7, 0.7, 0.7)], ids=["finer", "0.3mm", "coarser"])
def test_image_resamples_within_interpolation_error(target: tuple[float, float, float]) -> None:
    affine, shape = tiny_affine(), (40, 40, 12)
    image = _smooth(_world(shape, affine)).astype(np.float32)
    out, out_affine = resample_to_spacing(image, affine, target, "bilinear")
    inner = (slice(2, -2),) * 3  # trilinear is exact in the interior only; the border is clamped
    truth = _smooth(_world(out.shape, out_affine))
    assert np.abs(out - truth)[inner].max() < 0.03 * np.ptp(image)  # right values at the right places
    back = resample_to_grid(torch.from_numpy(out)[None], torch.as_tensor(out_affine), torch.as_tensor(affine),
                            shape, "bilinear")[0].numpy()
    err = np.abs(back - image)[inner]
    assert err.max() < 0.05 * np.ptp(image) and err.mean() < 0.01 * np.ptp(image)


def test_preprocessing_is_part_of_the_cache_key() -> None:
    plain = PatchSettings((32, 32), 10, 10, (3, 3, 2), 0)
    assert PreparedPatchSettings((32, 32), 10, 10, (3, 3, 2), 0).to_dict() == plain.to_dict()  # old keys kept
    spaced = PreparedPatchSettings((32, 32), 10, 10, (3, 3, 2), 0, target_spacing=FINE)
    stripped = PreparedPatchSettings((32, 32), 10, 10, (3, 3, 2), 0, skull_strip=True)
    dicts = [plain.to_dict(), spaced.to_dict(), stripped.to_dict()]
    assert dicts[1]["target_spacing"] == list(FINE) and dicts[2]["skull_strip"] is True
    assert len({str(sorted(d.items())) for d in dicts}) == 3
    assert VolumePrep.from_args(None, False) is None
    with pytest.raises(ValueError, match="target_spacing"):
        VolumePrep((0.5, 0.0, 0.5))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("spacing") / "cohort", n_patients=5)


def _dm(cohort: Path, cache: Path, **kw) -> SegmentationDataModule:
    args = dict(cohort_dir=str(cohort), n_train=2, n_val=1, n_test=2, cache_dir=str(cache), batch_size=4,
                patch_size=[32, 32], n_vessel=4, n_random=4)
    dm = SegmentationDataModule(**{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


class ThresholdNet(nn.Module):
    """Logits of "brighter than 60": the tiny cohort's vessels are ≈100, tissue ≈20 (a known, perfect net)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 60.0) * self.scale


def test_patches_and_predictions_at_target_spacing_come_back_native(cohort: Path, tmp_path: Path) -> None:
    native = _dm(cohort, tmp_path / "cache")
    dm = _dm(cohort, tmp_path / "cache", target_spacing=list(FINE))
    assert dm.store.root != native.store.root  # another cache entry
    assert all(p["spacing"] == list(FINE) for p in dm.store.manifest["patients"].values())
    assert dm.cohort_spacing() == FINE and native.cohort_spacing() == pytest.approx(TINY_SPACING)
    assert dm.data_manifest()["preprocessing"] == {"target_spacing": list(FINE), "skull_strip": False}

    batch = next(iter(dm.test_dataloader()))
    assert tuple(batch["label"].shape[2:]) == (40, 40, 12) and batch["image"].shape[2] > 75  # native label, fine image
    assert torch.allclose(batch["affine"][0], torch.as_tensor(tiny_affine()))
    module = SegmentationModule(ThresholdNet(), input_norm="none", roi_size=(32, 32), sw_batch_size=8).eval()
    out = module.test_step(batch, 0)
    assert out["pred"].shape == batch["label"].shape  # native grid, native affine
    assert torch.equal(out["affine"], batch["affine"])
    assert _dsc(out["pred"][0, 0].numpy(), batch["label"][0, 0].numpy()) > 0.9  # aligned, not shifted or flipped


def test_checkpoint_keeps_trained_spacing_and_warns_on_other_spacing(cohort: Path, tmp_path: Path) -> None:
    dm = _dm(cohort, tmp_path / "cache", target_spacing=list(FINE))
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.Adam, lr=1e-3)
    module = SegmentationModule(HalfUNet2D(features=(4, 8, 16)), optimizer=opt, roi_size=(32, 32), sw_batch_size=8)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "unet.ckpt")
    ckpt = torch.load(tmp_path / "unet.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["train_spacing"] == list(FINE)

    fresh = SegmentationModule(HalfUNet2D(features=(4, 8, 16)), roi_size=(32, 32), sw_batch_size=8)  # as `tofgan test`
    fresh.on_load_checkpoint(ckpt)
    assert fresh.train_spacing == FINE
    native_batch = next(iter(_dm(cohort, tmp_path / "cache").test_dataloader()))
    with pytest.warns(UserWarning, match=r"trained at 0.25×0.25×0.35 mm .* seen at 0.5×0.5×0.7 mm"):
        fresh.eval().test_step(native_batch, 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained at.*")
        fresh.test_step(next(iter(dm.test_dataloader())), 0)  # resampled to the trained spacing: silent
