"""Intracranial evaluation only for patients that have a brain mask (`has_brain_mask`), masked exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.cohort import discover_cohort
from datamodules.volumes import VolumeDataset
from lightning_modules.segmentation import SegmentationModule, intracranial_rows
from metrics.segmentation import segmentation_metrics
from networks.unet2d import HalfUNet2D
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*", "ignore:.*sync_dist.*")
SPACING = (0.5, 0.7, 1.3)
SHAPE = (32, 32, 5)


def _module(**kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(HalfUNet2D(features=(4, 8, 16)), roi_size=(32, 32), sw_batch_size=4,
                              optimizer=functools.partial(torch.optim.Adam, lr=1e-3), **kwargs)


def _trainer(tmp_path) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def _volume(seed: int, pid: str, has_mask: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(1, *SHAPE, generator=g) < 0.2).float()
    image = 50 + 30 * label + 8 * torch.randn(1, *SHAPE, generator=g)
    brain = torch.zeros(1, *SHAPE)
    brain[:, 6:26, 4:20, :] = 1  # leaves label and prediction voxels outside: the masking must matter
    return {"image": image, "label": label, "brain_mask": brain if has_mask else torch.ones(1, *SHAPE),
            "has_brain_mask": has_mask, "patient_id": pid, "affine": torch.eye(4, dtype=torch.float64),
            "spacing": torch.tensor(SPACING, dtype=torch.float64), "image_path": f"/{pid}.nii.gz"}


def _by_hand(module: SegmentationModule, vol: dict, masked: bool) -> dict[str, float]:
    pred = module.predict_volume(vol["image"][None])[0, 0].numpy() >= 0.5
    label = vol["label"][0].numpy() > 0.5
    if masked:
        brain = vol["brain_mask"][0].numpy() > 0.5
        pred, label = pred & brain, label & brain
    return segmentation_metrics(pred, label, SPACING)


def test_intracranial_rows():
    ones = torch.ones(3, 1, 2, 2, 2)
    assert intracranial_rows({"image": ones}) == []
    assert intracranial_rows({"brain_mask": ones}) == [0, 1, 2]  # a hand-made batch that gives a mask
    assert intracranial_rows({"brain_mask": ones, "has_brain_mask": torch.tensor([True, False, True])}) == [0, 2]
    with pytest.raises(ValueError, match="has_brain_mask"):
        intracranial_rows({"brain_mask": ones, "has_brain_mask": torch.tensor([True])})


@pytest.mark.parametrize("batch_size", [1, 2])
def test_intracranial_only_for_patients_with_a_mask_and_masked_exactly(tmp_path, batch_size):
    m = _module(report_dir=str(tmp_path))
    vols = [_volume(1, "with-a", True), _volume(2, "without", False), _volume(3, "with-b", True)]
    logged = _trainer(tmp_path).test(m, DataLoader(vols, batch_size=batch_size), verbose=False)[0]
    m.eval()
    masked = [_by_hand(m, v, True) for v in vols if v["has_brain_mask"]]
    unmasked = [_by_hand(m, v, False) for v in vols]
    assert logged["test/n_patients"] == 3 and logged["test/intracranial/n_patients"] == 2
    for name in ("dsc", "hd95", "bavd"):
        ic = np.array([r[name] for r in masked])
        assert logged[f"test/intracranial/{name}"] == pytest.approx(ic.mean(), rel=1e-6)
        assert logged[f"test/{name}"] == pytest.approx(np.mean([r[name] for r in unmasked]), rel=1e-6)
    # the mask really removed voxels: intracranial differs from all-vessel for the same two patients
    assert not np.isclose(np.mean([r["bavd"] for r in masked]), np.mean([unmasked[0]["bavd"], unmasked[2]["bavd"]]))


def test_no_intracranial_keys_when_no_patient_has_a_mask(tmp_path):
    m = _module(report_dir=str(tmp_path))
    logged = _trainer(tmp_path).test(m, DataLoader([_volume(4, "x", False), _volume(5, "y", False)], batch_size=1),
                                     verbose=False)[0]
    assert "test/dsc" in logged and not any("intracranial" in k for k in logged)
    header = (tmp_path / "test_per_patient.csv").read_text().splitlines()[0]
    assert "intracranial" not in header


def test_cohort_without_brain_masks_through_volume_dataset(tmp_path):
    """VolumeDataset gives a ones-mask with has_brain_mask False: no intracranial result may come of it."""
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=2, with_brain_mask=False)
    m = SegmentationModule(HalfUNet2D(features=(4, 8, 16)), roi_size=(24, 24), report_dir=str(tmp_path / "r"))
    logged = _trainer(tmp_path).test(m, DataLoader(VolumeDataset(discover_cohort(cohort)), batch_size=1),
                                     verbose=False)[0]
    assert logged["test/n_patients"] == 2 and not any("intracranial" in k for k in logged)
