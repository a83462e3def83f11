"""Splits and DataModules: batch shapes/ranges, per-device batch size, pooling, simulation on first use."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import SimulationSpec, normalize_patch
from datamodules.cohort import CohortError
from datamodules.gan_data import GANPatchDataModule
from datamodules.patch_store import write_patch_store
from datamodules.segmentation_data import SegmentationDataModule
from datamodules.splits import THOUSANDPLUS_TRAIN_SUBSETS, split_patients
from tests.fixtures_cohort import TINY_SHAPE, write_tiny_cohort

IDS = [f"id{i:02d}" for i in range(66)]


def test_splits_disjoint_deterministic_nested() -> None:
    s = split_patients(IDS, 41, 11, 14, seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [41, 11, 14]
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(IDS)
    assert not (set(s["train"]) & set(s["val"]) or set(s["train"]) & set(s["test"]) or set(s["val"]) & set(s["test"]))
    assert split_patients(list(reversed(IDS)), 41, 11, 14, seed=3) == s  # input order does not matter
    assert split_patients(IDS, 41, 11, 14, seed=4) != s
    prev: list[str] = []
    for k in THOUSANDPLUS_TRAIN_SUBSETS:
        sk = split_patients(IDS[:65], k, 10, 40, seed=0)
        assert sk["train"][: len(prev)] == prev and len(sk["train"]) == k  # nested
        assert sk["test"] == split_patients(IDS[:65], 1, 10, 40, seed=0)["test"]
        prev = sk["train"]
    assert len(split_patients(IDS, -1, 11, 14, 0)["train"]) == 41


def test_splits_too_few_patients() -> None:
    with pytest.raises(ValueError, match=r"too few patients: 10 found.*41 train \+ 11 val \+ 14 test = 66"):
        split_patients(IDS[:10], 41, 11, 14, seed=0)


def test_normalize_patch() -> None:
    x = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)
    np.testing.assert_allclose(normalize_patch(x, "minmax"), [[-1.0, -0.5], [0.0, 1.0]])
    np.testing.assert_allclose(normalize_patch(x, "zscore"), (x - 5.5) / np.std(x), rtol=1e-6)
    assert (normalize_patch(np.full((3, 3), 7.0), "minmax") == -1).all()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("dm") / "cohort", n_patients=6)


def _gan(cohort: Path, tmp_path: Path, **kw) -> GANPatchDataModule:
    args = dict(cohort_dir=str(cohort), n_train=3, n_val=2, n_test=1, cache_dir=str(tmp_path / "cache"),
                batch_size=8, patch_size=[16, 16], n_vessel=6, n_random=5)
    args.update(kw)
    dm = GANPatchDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_gan_2d_batches(cohort: Path, tmp_path: Path) -> None:
    dm = _gan(cohort, tmp_path)
    assert len(dm.records) == 6 and sum(len(v) for v in dm.splits.values()) == 6
    pids = dm.store.patient_ids
    assert set(pids[dm.train_set.indices]) == set(dm.splits["train"]) and len(dm.train_set) == 33
    assert set(pids[dm.val_set.indices]) == set(dm.splits["val"]) and len(dm.val_set) == 22
    batches = list(dm.train_dataloader())
    assert len(batches) == 33 // 8  # drop_last
    b = batches[0]
    assert b["image"].shape == (8, 1, 16, 16) and b["image"].dtype == torch.float32
    assert b["label"].shape == (8, 1, 16, 16) and b["label"].dtype == torch.float32
    flat = b["image"].flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.full((8,), -1.0))
    torch.testing.assert_close(flat.max(1).values, torch.full((8,), 1.0))
    assert set(b["label"].unique().tolist()) <= {0.0, 1.0}
    vb = next(iter(dm.val_dataloader()))
    # val is not shuffled: first batch = first val patches of the store, min-max scaled
    raw = torch.from_numpy(np.asarray(dm.store.images[dm.val_set.indices[:8]]))
    lo = raw.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = raw.flatten(1).max(1).values.view(-1, 1, 1, 1)
    torch.testing.assert_close(vb["image"], 2 * (raw - lo) / (hi - lo) - 1)


def test_gan_3d_batches(cohort: Path, tmp_path: Path) -> None:
    dm = _gan(cohort, tmp_path, patch_size=[16, 16, 8], grid=[3, 3, 2], n_vessel=2, n_random=0, batch_size=4)
    assert len(dm.train_set) == 3 * 20
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 1, 16, 16, 8) and b["label"].shape == (4, 1, 16, 16, 8)


class _FakeTrainer:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


def test_per_device_batch_size(cohort: Path, tmp_path: Path) -> None:
    dm = _gan(cohort, tmp_path, batch_size=12)
    dm.trainer = _FakeTrainer(4)  # type: ignore[assignment]
    assert dm.per_device_batch_size == 3
    assert next(iter(dm.train_dataloader()))["image"].shape[0] == 3
    dm.trainer = _FakeTrainer(5)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="batch_size 12 is the global batch.*world size 5"):
        dm.train_dataloader()


def test_segmentation_pools_synthetic_and_volumes(cohort: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    syn = write_patch_store(tmp_path / "syn", rng.uniform(-1, 1, (10, 1, 16, 16)),
                            (rng.random((10, 1, 16, 16)) > 0.9).astype(np.uint8), {"source": "test"})
    common = dict(cohort_dir=str(cohort), n_train=3, n_val=2, n_test=1, cache_dir=str(tmp_path / "cache"),
                  batch_size=4, patch_size=[16, 16], n_vessel=6, n_random=5)
    dm = SegmentationDataModule(**common, synthetic_stores=[str(syn.root)], predict_split="val")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 33 + 10
    images = torch.cat([b["image"] for b in dm.train_dataloader()])
    assert images.shape == (40, 1, 16, 16)
    assert (images.flatten(1).min(1).values < -0.5).sum() >= 1 and images.max() > 10  # raw real + [-1,1] synthetic

    dm.setup("test")
    vb = next(iter(dm.test_dataloader()))
    assert vb["image"].shape == (1, 1, *TINY_SHAPE) and vb["label"].shape == (1, 1, *TINY_SHAPE)
    assert vb["brain_mask"].shape == (1, 1, *TINY_SHAPE) and vb["has_brain_mask"].tolist() == [True]
    assert vb["patient_id"] == dm.splits["test"] and vb["affine"].shape == (1, 4, 4)
    assert vb["spacing"].dtype == torch.float64 and vb["spacing"].shape == (1, 3)
    assert vb["image_path"][0].endswith(f"{dm.splits['test'][0]}/image.nii.gz")
    assert [b["patient_id"][0] for b in dm.predict_dataloader()] == dm.splits["val"]

    only_syn = SegmentationDataModule(**common, use_real=False, synthetic_stores=[str(syn.root)])
    only_syn.prepare_data()
    only_syn.setup("fit")
    assert len(only_syn.train_set) == 10 and len(only_syn.val_set) == 22
    with pytest.raises(ValueError, match="use_real is False and no synthetic_stores"):
        SegmentationDataModule(**common, use_real=False)
    bad = write_patch_store(tmp_path / "syn8", np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 8)), {})
    with pytest.raises(ValueError, match=r"syn8: synthetic patch size \(8, 8\) differs"):
        SegmentationDataModule(**common, synthetic_stores=[str(bad.root)]).setup("fit")


def test_missing_cohort_without_and_with_simulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CohortError, match=r"nope: no cohort found.*set `simulate`"):
        GANPatchDataModule(cohort_dir=str(tmp_path / "nope")).prepare_data()

    calls = []

    def fake_simulate_cohort(out_dir, profile="pegasus", n_patients=66, seed=0, scale=1.0, id_prefix=None,
                             overwrite=False, progress=True):
        """Stands in for simulation.cohort: same layout, cohort.json marked complete at the end."""
        calls.append((profile, n_patients, seed, scale))
        root = write_tiny_cohort(out_dir, n_patients=n_patients + 1, prefix=f"{profile}-sim-")
        ids = [f"{profile}-sim-{i:03d}" for i in range(n_patients)]  # one extra folder, not listed
        (root / "cohort.json").write_text(json.dumps({"profile": profile, "n_patients": n_patients, "seed": seed,
                                                      "scale": float(scale), "patient_ids": ids, "complete": True,
                                                      "simulator_version": "fake"}))
        return root

    fake = types.ModuleType("simulation.cohort")
    fake.simulate_cohort = fake_simulate_cohort  # type: ignore[attr-defined]
    fake.SIMULATOR_VERSION = "fake"  # type: ignore[attr-defined]  # a cohort of another version is refused
    monkeypatch.setitem(sys.modules, "simulation.cohort", fake)
    spec = SimulationSpec("1000plus", n_patients=6, scale=0.5, seed=2)
    sim = tmp_path / "data" / "simulated" / "1000plus-tiny"  # the default simulated cohort's place
    dm = _gan(sim, tmp_path, simulate=spec)
    assert calls == [("1000plus", 6, 2, 0.5)] and len(dm.records) == 6  # the unlisted folder is ignored
    dm.prepare_data()
    assert len(calls) == 1  # finished cohort with the same settings: reused
    meta = json.loads((sim / "cohort.json").read_text())
    (sim / "cohort.json").write_text(json.dumps({**meta, "complete": False}))  # as after an interruption
    dm.prepare_data()
    assert len(calls) == 2  # resumed
    with pytest.raises(CohortError, match=r"cohort\.json: an unfinished simulated cohort"):
        (sim / "cohort.json").write_text(json.dumps({**meta, "complete": False}))
        GANPatchDataModule(cohort_dir=str(sim)).prepare_data()  # simulate: null does not train on half a cohort
    (sim / "cohort.json").write_text(json.dumps(meta))

    other = SimulationSpec("1000plus", n_patients=7, scale=0.5, seed=3)
    with pytest.raises(CohortError, match=r"other settings \(n_patients: 6 in cohort.json, 7 in `simulate`; "
                                          r"seed: 2 in cohort.json, 3 in `simulate`\)"):
        GANPatchDataModule(cohort_dir=str(sim), simulate=other).prepare_data()

    for typo in (tmp_path / "data" / "simulatd" / "1000plus-tiny", tmp_path / "data" / "simulated" / "1000pls"):
        with pytest.raises(CohortError, match=r"holds no cohort, and auto-simulation writes only to the default"):
            GANPatchDataModule(cohort_dir=str(typo), simulate=spec).prepare_data()
        assert not typo.exists()
    assert len(calls) == 2

    real = write_tiny_cohort(tmp_path / "data" / "simulated" / "1000plus-mine", n_patients=6)
    (real / "notes.txt").write_text("mine")
    with pytest.raises(CohortError, match=r"1000plus-mine: holds files the simulator did not make.*simulate: null"):
        GANPatchDataModule(cohort_dir=str(real), simulate=spec).prepare_data()
    assert len(calls) == 2 and sorted(p.name for p in real.iterdir())[-1] == "p005"


def test_lightning_cli_config_types(repo_root: Path, tmp_path: Path) -> None:
    """The shipped data configs instantiate through jsonargparse (as LightningCLI does)."""
    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    for name in ("pegasus_gan.yaml", "pegasus_seg.yaml"):
        cfg_file = repo_root / "configs" / "data" / name
        if not cfg_file.is_file():
            pytest.skip(f"{cfg_file} missing")
        parser = ArgumentParser()
        parser.add_subclass_arguments(L.LightningDataModule, "data")
        cfg = parser.parse_object(yaml.safe_load(cfg_file.read_text()))
        dm = parser.instantiate_classes(cfg).data
        assert isinstance(dm.simulate, SimulationSpec) and dm.simulate.n_patients == 66
        assert (dm.n_train, dm.n_val, dm.n_test) == (41, 11, 14) and dm.patch_settings.patch_size == (96, 96)


def test_with_the_real_simulator(tmp_path: Path) -> None:
    """End to end with simulation.cohort at a tiny scale (skipped while the simulator is not there)."""
    sim = pytest.importorskip("simulation.cohort")
    if not hasattr(sim, "simulate_cohort"):
        pytest.skip("simulation.cohort.simulate_cohort not available")
    sim = tmp_path / "data" / "simulated" / "pegasus"
    dm = _gan(sim, tmp_path, simulate=SimulationSpec("pegasus", n_patients=6, scale=0.15))
    assert len(dm.records) == 6 and json.loads((sim / "cohort.json").read_text())["complete"] is True
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (8, 1, 16, 16) and float(b["image"].min()) == -1.0
    assert (b["label"][:, 0, 8, 8] == 1).any()  # vessel-centred patches present
