"""PerfusionDataModule: global min–max scaling and its inversion, splits, time resampling, bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.cohort import CohortError
from datamodules.perfusion_data import PerfusionDataModule, default_split
from tests.perfusion_fixtures import write_plausible_cohort, write_tiny_cohort


@pytest.fixture(scope="module")
def acute(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("dsc") / "acute", n_patients=5)


def _all(loader) -> dict:  # noqa: ANN001
    batches = list(loader)
    return {k: (torch.cat([b[k] for b in batches]) if isinstance(batches[0][k], torch.Tensor)
                else sum((b[k] for b in batches), [])) for k in batches[0]}


def test_batches_follow_the_contract(acute: Path) -> None:
    dm = PerfusionDataModule(str(acute), target_map="cbf", batch_size=2)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["frames"].shape == (2, 80, 16, 16) and b["frames"].dtype == torch.float32
    for key in ("target", "pipeline", "truth"):
        assert b[key].shape == (2, 1, 16, 16) and b[key].dtype == torch.float32
    assert b["mask"].dtype == torch.bool and b["slice"].dtype == torch.int64 and len(b["patient"]) == 2
    # acute profile: 60 frames at TR 2.22 s resampled to 80 over the same span
    t = dm.timing(dm.splits["train"][0])
    assert t["tr_original"] == 2.22 and t["tr"] == pytest.approx(2.22 * 59 / 79) and t["te"] == 0.036


@pytest.mark.parametrize("reference", ["pipeline", "truth"])
def test_training_set_global_minmax_and_round_trip(acute: Path, reference: str) -> None:
    dm = PerfusionDataModule(str(acute), target_map="tmax", reference=reference, batch_size=4)
    dm.setup("fit")
    train = _all(dm.train_dataloader())
    assert train["frames"].min() == pytest.approx(-1, abs=1e-6) and train["frames"].max() == pytest.approx(1, abs=1e-6)
    assert train["target"].min() == pytest.approx(-1, abs=1e-6) and train["target"].max() == pytest.approx(1, abs=1e-6)
    # lo/hi are the training patients' extremes in physical units, read independently from the files
    maps = [np.asarray(nib.load(acute / p / reference / "tmax.nii.gz").dataobj) for p in dm.splits["train"]]
    assert dm.target_scaler.hi == pytest.approx(max(m.max() for m in maps), rel=1e-6)
    np.testing.assert_allclose(dm.target_scaler.to_physical(train["target"]), train[reference], atol=1e-4)
    # val/test use the same scaling (no refit): values may leave [-1, 1]
    val = _all(dm.val_dataloader())
    np.testing.assert_allclose(dm.target_scaler.to_physical(val["target"]), val[reference], atol=1e-4)
    ids = [set(dm.splits[s]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set(train["patient"]) == ids[0] and set(val["patient"]) == ids[1]


def test_scalers_travel_in_state_dict(acute: Path) -> None:
    dm = PerfusionDataModule(str(acute), target_map="ttp")
    dm.setup("fit")
    state = json.loads(json.dumps(dm.state_dict()))  # plain data, as stored in a checkpoint
    other = PerfusionDataModule(str(acute), target_map="ttp", split=(2, 1, 2))  # another split, other extremes
    other.load_state_dict(state)
    other.setup("fit")  # keeps the restored scalers
    assert (other.target_scaler.lo, other.target_scaler.hi) == (dm.target_scaler.lo, dm.target_scaler.hi)
    assert (other.frames_scaler.lo, other.frames_scaler.hi) == (dm.frames_scaler.lo, dm.frames_scaler.hi)
    x = torch.linspace(-1, 1, 5)
    np.testing.assert_allclose(other.target_scaler.to_unit(other.target_scaler.to_physical(x)), x, atol=1e-6)
    with pytest.raises(ValueError, match="trained on 'ttp'"):
        PerfusionDataModule(str(acute), target_map="cbf").load_state_dict(state)


def test_default_splits() -> None:
    assert default_split("acute", 203) == (142, 20, 41)
    assert default_split("steno", 70) == (50, 8, 12)
    assert default_split("acute", 5) == (3, 1, 1)
    assert default_split("steno", 14) == (10, 2, 2)
    with pytest.raises(CohortError, match="at least 3"):
        default_split("acute", 2)


def test_cache_gives_the_same_batches(acute: Path, tmp_path: Path) -> None:
    plain = PerfusionDataModule(str(acute), target_map="mtt")
    plain.setup()
    for _ in range(2):  # the second one reads the memory-mapped cache
        cached = PerfusionDataModule(str(acute), target_map="mtt", cache_dir=str(tmp_path / "cache"))
        cached.setup()
        a, b = _all(plain.val_dataloader()), _all(cached.val_dataloader())
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["target"], b["target"])
    assert len(list((tmp_path / "cache").iterdir())) == 5


def test_frame_count_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frames=63"):
        PerfusionDataModule(str(tmp_path), frames=63)
    with pytest.raises(ValueError, match="frames=128"):
        PerfusionDataModule(str(tmp_path), frames=128)
    root = write_plausible_cohort(tmp_path / "short", n_patients=3, frames=60)
    with pytest.raises(CohortError, match=r"short/.*dsc\.nii\.gz: 60 frames; without resampling"):
        PerfusionDataModule(str(root), frames=None).setup()
    root = write_plausible_cohort(tmp_path / "long", n_patients=3, frames=130)
    with pytest.raises(CohortError, match=r"long/.*dsc\.nii\.gz: 130 frames"):
        PerfusionDataModule(str(root), frames=None).setup()
    root = write_plausible_cohort(tmp_path / "tiny", n_patients=3, frames=30)
    with pytest.raises(CohortError, match=r"tiny/.*dsc\.nii\.gz: 30 frames, fewer than min_source_frames"):
        PerfusionDataModule(str(root)).setup()


def _broken(tmp_path: Path, name: str) -> tuple[Path, Path]:
    root = write_plausible_cohort(tmp_path / name, n_patients=3)
    return root, root / "acute-001"


def _save(arr: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    root, p = _broken(tmp_path, "three_d")
    _save(np.zeros((16, 16, 3), np.float32), p / "dsc.nii.gz")
    with pytest.raises(CohortError, match=r"acute-001/dsc\.nii\.gz: expected a 4D DSC series"):
        PerfusionDataModule(str(root)).setup()

    root, p = _broken(tmp_path, "nan")
    series = np.asarray(nib.load(p / "dsc.nii.gz").dataobj).copy()
    series[3, 4, 1, 17] = np.nan
    _save(series, p / "dsc.nii.gz")
    with pytest.raises(CohortError, match=r"acute-001/dsc\.nii\.gz: NaN/Inf in frames \[17\]"):
        PerfusionDataModule(str(root)).setup()

    root, p = _broken(tmp_path, "mask")
    _save(np.ones((16, 15, 3), np.uint8), p / "brain_mask.nii.gz")
    with pytest.raises(CohortError, match=r"acute-001/brain_mask\.nii\.gz: brain mask has shape \(16, 15, 3\)"):
        PerfusionDataModule(str(root)).setup()

    root, p = _broken(tmp_path, "map")
    _save(np.ones((16, 16, 4), np.float32), p / "pipeline" / "tmax.nii.gz")
    with pytest.raises(CohortError, match=r"acute-001/pipeline/tmax\.nii\.gz: pipeline tmax map has shape"):
        PerfusionDataModule(str(root)).setup()

    root, p = _broken(tmp_path, "meta")
    (p / "meta.json").write_text('{"TR": 1.39,')
    with pytest.raises(CohortError, match=r"acute-001/meta\.json: not valid JSON"):
        PerfusionDataModule(str(root)).setup()

    root, p = _broken(tmp_path, "missing")
    shutil.rmtree(p / "truth")
    dm = PerfusionDataModule(str(root), split=(1, 1, 1), seed=0)
    dm.setup()  # real data have no truth: NaN truth, pipeline target still usable
    with pytest.raises(CohortError, match="reference 'truth'"):
        PerfusionDataModule(str(root), reference="truth", split=(2, 0, 1), seed=3).setup()


def test_only_brain_slices_are_used(acute: Path) -> None:
    dm = PerfusionDataModule(str(acute), min_brain_fraction=0.2, split=(3, 1, 1))
    dm.setup()
    for pid in dm.splits["train"]:
        frac = np.asarray(nib.load(acute / pid / "brain_mask.nii.gz").dataobj).mean(axis=(0, 1))
        np.testing.assert_array_equal(dm.stores[pid].arrays["slices"], np.flatnonzero(frac >= 0.2))
    assert 0 < len(dm.dataset("train")) < 9  # some of the 3 × 3 slices are dropped at this threshold


def test_simulates_the_default_cohort_on_first_use(tmp_path: Path) -> None:
    spec = {"profile": "steno", "n_patients": 3, "shape": (16, 16, 3), "seed": 0}
    root = tmp_path / "data" / "simulated" / "dsc_steno_test"
    dm = PerfusionDataModule(str(root), simulate=spec)
    dm.setup()
    assert json.loads((root / "cohort.json").read_text())["complete"] and len(dm.dataset("train")) > 0
    with pytest.raises(CohortError, match="n_patients: 3 on disk, 4 asked"):
        PerfusionDataModule(str(root), simulate={**spec, "n_patients": 4}).setup()
    with pytest.raises(CohortError, match="no such cohort folder"):  # any other folder must hold a cohort
        PerfusionDataModule(str(tmp_path / "typo"), simulate=spec).setup()
