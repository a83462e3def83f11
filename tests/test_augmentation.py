"""Paper augmentation: binary, aligned labels; paper ranges; seeded; only on training patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from datamodules.augmentation import AugmentedDataset, paper_augmentation
from datamodules.segmentation_data import SegmentationDataModule
from tests.fixtures_cohort import write_tiny_cohort

K, C = 50.0, 10.0


def _label(size: int = 48) -> torch.Tensor:
    """Two thick bars and a disc: large interiors, so 'away from edges' still leaves many pixels."""
    lab = torch.zeros(1, size, size)
    lab[:, 8:18, 4:40] = 1
    lab[:, 22:44, 30:38] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    lab[0][((yy - 34) ** 2 + (xx - 14) ** 2) <= 49] = 1
    return lab


def _item(label: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"image": label * K + C, "label": label.clone()}


@pytest.mark.parametrize("seed", range(6))
def test_labels_stay_binary_and_aligned_with_the_image(seed):
    lab = _label()
    out = AugmentedDataset([_item(lab)], seed=seed)[0]
    img, aug = out["image"][0].numpy(), out["label"][0].numpy()
    assert set(np.unique(aug)) <= {0.0, 1.0}
    assert out["image"].shape == out["label"].shape == (1, 48, 48) and out["label"].dtype == torch.float32
    assert not np.array_equal(aug, lab[0].numpy())  # something happened
    # away from label edges (2 px), image == label * K + C; bilinear vs nearest only differ at edges
    inside = ndimage.binary_erosion(aug > 0, iterations=2)
    outside = ndimage.binary_erosion(aug == 0, iterations=2, border_value=1)
    assert inside.sum() > 50 and outside.sum() > 500
    np.testing.assert_allclose(img[inside], K + C, atol=1e-3)
    np.testing.assert_allclose(img[outside], C, atol=1e-3)


def test_same_seed_same_result_other_seed_other_result():
    items = [_item(_label())] * 3
    da, db, dc = AugmentedDataset(items, seed=7), AugmentedDataset(items, seed=7), AugmentedDataset(items, seed=8)
    a, b, c = ([d[i]["image"] for i in range(3)] for d in (da, db, dc))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # successive draws differ


def test_parameter_ranges_are_the_papers():
    """Rotation uniform in ±30°, shear angle in ±20° along one axis only, flip of axis 0 half the time."""
    t = paper_augmentation(seed=0)
    affine, flip = t.transforms
    grid = affine.rand_affine.rand_affine_grid
    data = _item(_label(16))
    rot, shear, flips = [], [], []
    for _ in range(300):
        t(data)
        rot.append(grid.rotate_params[0])
        shear.append(list(grid.shear_params))
        flips.append(flip._do_transform)
    rot, shear = np.degrees(np.array(rot)), np.array(shear)
    assert np.abs(rot).max() <= 30 and np.abs(rot).max() > 27
    angle = np.degrees(np.arctan(shear[:, 0]))
    assert np.abs(angle).max() <= 20 + 1e-9 and np.abs(angle).max() > 18
    assert np.all(shear[:, 1] == 0)
    assert 0.4 < np.mean(flips) < 0.6


def test_flip_is_of_the_row_axis():
    """With no rotation or shear, every output is the input or the input flipped along axis 0 (rows)."""
    lab = _label()
    ds = AugmentedDataset([_item(lab)] * 20, seed=3, rotation_deg=0.0, shear_deg=0.0, flip_prob=0.5)
    seen = set()
    for i in range(20):
        out = ds[i]["label"]
        same, flipped = torch.equal(out, lab), torch.equal(out, torch.flip(lab, dims=[1]))
        assert same or flipped
        seen.add(flipped)
    assert seen == {True, False}


def test_workers_draw_different_augmentations_reproducibly():
    ds = AugmentedDataset([_item(_label(24))] * 4, seed=0)

    def run() -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(5))
        return [b["image"] for b in loader]

    first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])  # the two workers' batches (same items) are not copies


def test_datamodule_augments_training_patches_only(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=5)
    kw = dict(cohort_dir=str(cohort), n_train=2, n_val=1, n_test=2, cache_dir=str(tmp_path / "cache"),
              patch_size=[24, 24], n_vessel=4, n_random=4, batch_size=4)
    plain, aug = SegmentationDataModule(**kw), SegmentationDataModule(**kw, augment=True)
    for dm in (plain, aug):
        dm.setup("fit")
    assert len(aug.train_set) == len(plain.train_set) == 16
    for i in range(len(aug.val_set)):
        assert torch.equal(aug.val_set[i]["image"], plain.val_set[i]["image"])
    changed = 0
    for i in range(len(aug.train_set)):
        a, p = aug.train_set[i], plain.train_set[i]
        assert set(a["label"].unique().tolist()) <= {0.0, 1.0}
        changed += not torch.equal(a["image"], p["image"])
    assert changed >= 14
    batch = next(iter(aug.train_dataloader()))
    assert batch["image"].shape == (4, 1, 24, 24) and type(batch["image"]) is torch.Tensor
    assert math.isfinite(float(batch["image"].sum()))
