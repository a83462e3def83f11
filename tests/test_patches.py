"""Patch extraction invariants, checked against direct slicing of an independently padded volume."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from datamodules.cohort import PatientVolume
from datamodules.patches import (KIND_GRID, KIND_RANDOM, KIND_VESSEL, PatchSettings, extract_patches,
                                 grid_centres, patient_rng)
from tests.fixtures_cohort import tiny_patient


def _volume(pid: str = "p0", shape=(40, 40, 12), seed: int = 0, mask: bool = True) -> PatientVolume:
    image, label, brain = tiny_patient(shape, seed=seed)
    return PatientVolume(pid, image, label, brain.astype(bool) if mask else None, np.eye(4), (0.5, 0.5, 0.7), "x")


def _padded_slice(volume: np.ndarray, c: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """Reference: pad the whole volume by half a patch on each side, then slice (independent of cut_patch)."""
    pads = [(s // 2, s - s // 2) for s in size]
    padded = np.pad(volume, pads, mode="constant", constant_values=fill)
    return padded[c[0]:c[0] + size[0], c[1]:c[1] + size[1], c[2]:c[2] + size[2]]


def _check_against_source(vol: PatientVolume, ps, settings: PatchSettings) -> None:
    size = settings.cut_size
    for c, img, lab in zip(ps.centres, ps.images, ps.labels):
        ref_img = _padded_slice(vol.image, c, size, float(vol.image.min()))
        ref_lab = _padded_slice(vol.label, c, size, 0)
        if not settings.is_3d:
            ref_img, ref_lab = ref_img[..., 0], ref_lab[..., 0]
        np.testing.assert_array_equal(img[0], ref_img)
        np.testing.assert_array_equal(lab[0], ref_lab)


def test_2d_counts_kinds_uniqueness_and_pairing() -> None:
    vol = _volume()
    s = PatchSettings((16, 12), n_vessel=30, n_random=40, seed=1)
    ps = extract_patches(vol, s)
    assert ps.images.shape == (70, 1, 16, 12) and ps.images.dtype == np.float32
    assert ps.labels.shape == (70, 1, 16, 12) and ps.labels.dtype == np.uint8
    assert ps.centres.shape == (70, 3) and np.issubdtype(ps.centres.dtype, np.integer)
    assert (ps.kinds == KIND_VESSEL).sum() == 30 and (ps.kinds == KIND_RANDOM).sum() == 40
    assert len({tuple(c) for c in ps.centres}) == 70  # no centre twice, across both groups
    assert ((ps.centres >= 0) & (ps.centres < vol.image.shape)).all()
    vc = ps.centres[ps.kinds == KIND_VESSEL]
    assert vol.label[tuple(vc.T)].all()  # vessel voxel at every vessel centre ...
    assert (ps.labels[ps.kinds == KIND_VESSEL][:, 0, 8, 6] == 1).all()  # ... and at the patch centre
    rc = ps.centres[ps.kinds == KIND_RANDOM]
    assert vol.brain_mask[tuple(rc.T)].all()
    _check_against_source(vol, ps, s)


def test_deterministic_per_patient_and_seed() -> None:
    s = PatchSettings((8, 8), n_vessel=10, n_random=10, seed=5)
    a, b = extract_patches(_volume("p0"), s), extract_patches(_volume("p0"), s)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert not np.array_equal(a.centres, extract_patches(_volume("p1"), s).centres)
    s2 = PatchSettings((8, 8), n_vessel=10, n_random=10, seed=6)
    assert not np.array_equal(a.centres, extract_patches(_volume("p0"), s2).centres)
    x, y = patient_rng("p0", 5).random(3), patient_rng("p0", 5).random(3)
    np.testing.assert_array_equal(x, y)


def test_near_border_centres_full_size() -> None:
    vol = _volume(mask=False)
    vol.label[:] = 0
    vol.label[0, 0, :] = 1  # vessels only in a corner column
    vol.label[39, 20, 0] = 1
    s = PatchSettings((16, 16), n_vessel=13, n_random=0)
    ps = extract_patches(vol, s)
    assert len(ps) == 13 and ps.images.shape[2:] == (16, 16)
    assert (ps.labels[:, 0, 8, 8] == 1).all()
    _check_against_source(vol, ps, s)
    corner = ps.labels[(ps.centres[:, 0] == 0)][0, 0]
    assert corner[:8].sum() == 0  # padded part of the label is 0


def test_fewer_candidates_takes_all_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    vol = _volume(shape=(10, 10, 3), mask=False)
    vol.label[:] = 0
    vol.label[2:4, 5, 1] = 1  # 2 vessel voxels
    s = PatchSettings((4, 4), n_vessel=5, n_random=500)  # 300 voxels, 2 taken by vessels
    with caplog.at_level(logging.WARNING):
        ps = extract_patches(vol, s)
    assert (ps.kinds == KIND_VESSEL).sum() == 2 and (ps.kinds == KIND_RANDOM).sum() == 298
    assert len({tuple(c) for c in ps.centres}) == 300
    assert "only 2 distinct vessel centres" in caplog.text and "only 298 distinct random" in caplog.text


@pytest.mark.parametrize("shape,size,grid", [((312, 384, 127), (128, 128, 64), (3, 3, 2)),
                                             ((40, 40, 12), (16, 16, 8), (3, 3, 2)),
                                             ((40, 40, 12), (16, 16, 8), (4, 3, 2))])
def test_grid_covers_volume(shape, size, grid) -> None:
    centres = grid_centres(shape, size, grid)
    assert len(centres) == np.prod(grid)
    covered = np.zeros(shape, bool)
    for c in centres:
        lo = np.maximum(c - np.asarray(size) // 2, 0)
        hi = c - np.asarray(size) // 2 + size
        assert (c - np.asarray(size) // 2 >= 0).all() and (hi <= shape).all()  # inside: no padding needed
        covered[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert covered.all()


def test_3d_grid_plus_vessel_patches() -> None:
    vol = _volume()
    s = PatchSettings((16, 16, 8), n_vessel=7, n_random=0, grid=(3, 3, 2))
    ps = extract_patches(vol, s)
    assert ps.images.shape == (25, 1, 16, 16, 8)
    assert (ps.kinds == KIND_GRID).sum() == 18 and (ps.kinds == KIND_VESSEL).sum() == 7
    assert len({tuple(c) for c in ps.centres}) == 25
    assert (ps.labels[ps.kinds == KIND_VESSEL][:, 0, 8, 8, 4] == 1).all()
    _check_against_source(vol, ps, s)


def test_settings_validation_and_key_dict() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        PatchSettings((96,))
    assert "grid" not in PatchSettings((96, 96)).to_dict()
    assert PatchSettings((8, 8, 4)).to_dict()["grid"] == [3, 3, 2]
