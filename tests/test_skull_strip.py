"""Skull stripping (the 2D paper's protocol, datamodules.preprocess): non-brain voxels leave the patches (image
and label) and the predictions; a patient without a brain mask is refused, naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.cohort import CohortError, discover_cohort, load_patient
from datamodules.gan_data import GANPatchDataModule
from datamodules.segmentation_data import SegmentationDataModule
from lightning_modules.segmentation import SegmentationModule
from tests.fixtures_cohort import tiny_patient, write_nifti, write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*")
BRIGHT = 500.0  # fat / marrow outside the brain: brighter than any brain voxel (≤ ≈110)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny patients with a bright scalp and an extracranial vessel (labelled) outside the brain mask."""
    root = tmp_path_factory.mktemp("strip") / "cohort"
    for i in range(5):
        image, label, brain = tiny_patient(seed=i)
        image[brain == 0] = BRIGHT
        label[:2, 5:35, :] = 1  # extracranial vessel sheet at the x = 0 border, outside the brain
        assert not (label[:2] & brain[:2]).any()
        for name, arr in (("image", image), ("label", label), ("brain_mask", brain)):
            write_nifti(root / f"p{i:03d}" / f"{name}.nii.gz", arr)
    return root


def _dm(cls: type, cohort: Path, cache: Path, **kw):
    args = dict(cohort_dir=str(cohort), n_train=2, n_val=1, n_test=2, cache_dir=str(cache), batch_size=4,
                patch_size=[16, 16], n_vessel=30, n_random=10)
    dm = cls(**{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _inside(store, records) -> np.ndarray:
    """Per patch: is its centre inside the patient's brain mask?"""
    masks = {r.patient_id: load_patient(r, prepared=False).brain_mask for r in records}
    return np.array([masks[str(p)][tuple(c)] for p, c in zip(store.patient_ids, store.centres)])


@pytest.mark.parametrize("cls", [GANPatchDataModule, SegmentationDataModule])
def test_skull_strip_removes_non_brain_voxels_from_patches(cls: type, cohort: Path, tmp_path: Path) -> None:
    plain = _dm(cls, cohort, tmp_path / "cache")
    stripped = _dm(cls, cohort, tmp_path / "cache", skull_strip=True)
    assert stripped.store.root != plain.store.root  # its own cache entry
    assert stripped.data_manifest()["patch_settings"]["skull_strip"] is True
    # Unstripped (the 3D paper's protocol): the scalp is in the patches and extracranial vessels are centres.
    assert plain.store.images[:].max() >= BRIGHT and not _inside(plain.store, plain.records).all()
    # Stripped: nothing brighter than brain tissue, every patch centred in the brain, labels only inside it.
    assert stripped.store.images[:].max() < BRIGHT / 2 and stripped.store.images[:].min() == 0.0
    assert _inside(stripped.store, stripped.records).all()
    for r in stripped.records:
        vol = load_patient(r)
        assert not vol.label[~vol.brain_mask].any() and not vol.image[~vol.brain_mask].any()


class EverythingNet(nn.Module):
    """Predicts vessel everywhere: whatever survives in the output is the data's doing."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + self.bias


def test_skull_strip_removes_non_brain_voxels_from_predictions(cohort: Path, tmp_path: Path) -> None:
    module = SegmentationModule(EverythingNet(), input_norm="none", roi_size=(16, 16), sw_batch_size=16).eval()
    dm = _dm(SegmentationDataModule, cohort, tmp_path / "cache", skull_strip=True)
    batch = next(iter(dm.test_dataloader()))
    brain = batch["brain_mask"] > 0.5
    assert batch["skull_strip"].all() and batch["image"][~brain].abs().max() == 0
    assert not batch["label"][~brain].any()  # the extracranial vessel is not scored
    out = module.test_step(batch, 0)
    assert torch.equal(out["pred"].bool(), brain) and out["prob"][~brain].max() == 0
    plain = _dm(SegmentationDataModule, cohort, tmp_path / "cache")
    out = module.test_step(next(iter(plain.test_dataloader())), 0)
    assert out["pred"].all()  # unstripped: predictions outside the brain stay


def test_skull_strip_needs_a_brain_mask(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "nomask", n_patients=5, with_brain_mask=False)
    image = discover_cohort(root)[0].image
    with pytest.raises(CohortError, match=rf"{image}: skull_strip needs a brain mask"):
        _dm(SegmentationDataModule, root, tmp_path / "cache", skull_strip=True)
