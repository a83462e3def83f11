"""Patch stores: statistics in the manifest checked at every open (NaN, truncation), only stores replaced,
temporary folders of killed writers removed by the next write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import datamodules.patches as patches_mod
from datamodules.cohort import discover_cohort
from datamodules.patch_store import PatchStore, build_patch_store, check_store_target, write_patch_store
from datamodules.store_folders import host_tag
from datamodules.patches import PatchSettings
from tests.fixtures_cohort import tiny_patient, write_nifti, write_tiny_cohort

REPO = Path(__file__).resolve().parents[1]


def _arrays(n: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32), (rng.random((n, 1, 8, 8)) > 0.7).astype(np.uint8)


def _strip_statistics(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    stats = manifest.pop("statistics")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return stats


# --------------------------------------------------------------------------- statistics
def test_statistics_are_recorded_and_exact(tmp_path: Path) -> None:
    images, labels = _arrays()
    store = write_patch_store(tmp_path / "s", images, labels, {})
    stats = store.manifest["statistics"]
    assert stats["images"]["finite"] and stats["images"]["n_nonfinite"] == 0
    assert stats["images"]["min"] == float(images.min()) and stats["images"]["max"] == float(images.max())
    assert stats["images"]["mean"] == pytest.approx(float(images.astype(np.float64).mean()), rel=1e-12)
    assert stats["labels"]["mean"] == pytest.approx(labels.mean()) and stats["labels"]["max"] == 1
    assert stats["file_bytes"]["images.npy"] == (tmp_path / "s" / "images.npy").stat().st_size
    PatchStore(tmp_path / "s", verify="full")  # the recorded blocks match a reread


def test_nan_is_refused_when_written(tmp_path: Path) -> None:
    images, labels = _arrays()
    images[5, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"s: images.npy holds 1 NaN/Inf values \(first in patches 0–8\)"):
        write_patch_store(tmp_path / "s", images, labels, {})
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def test_real_patient_with_nan_is_refused_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN voxels are refused when a volume is read; NaN made on the way (e.g. a normalisation of a constant
    patch) is refused while the store is built, naming the patient."""
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=3)
    image, _, _ = tiny_patient(seed=1)
    image[:, :, 3:6] = np.nan
    write_nifti(cohort / "p001" / "image.nii.gz", image)
    with pytest.raises(ValueError, match=r"p001/image.nii.gz: image has \d+ NaN/Inf voxel"):
        build_patch_store(discover_cohort(cohort), tmp_path / "cache", PatchSettings((12, 12), 3, 3, seed=0),
                          progress=False)
    write_tiny_cohort(tmp_path / "cohort", n_patients=3)
    real = patches_mod.extract_patches

    def nan_for_p001(vol, settings):
        ps = real(vol, settings)
        if vol.patient_id == "p001":
            ps.images[1, 0, 0, 0] = np.nan
        return ps

    monkeypatch.setattr(patches_mod, "extract_patches", nan_for_p001)
    with pytest.raises(ValueError, match=r"patient p001 \(.*p001/image.nii.gz\) gives patches with 1 NaN/Inf"):
        build_patch_store(discover_cohort(cohort), tmp_path / "cache", PatchSettings((12, 12), 3, 3, seed=0),
                          progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["source_hashes.json"]  # no store, no tmp left


def test_recorded_nan_or_damage_is_refused_on_open(tmp_path: Path) -> None:
    root = write_patch_store(tmp_path / "s", *_arrays(), {}).root
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["statistics"]["images"].update(finite=False, n_nonfinite=4)
    manifest["statistics"]["images"]["blocks"][0][2] = 4
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{root}: images.npy holds 4 NaN/Inf"):
        PatchStore(root)


def test_nan_written_behind_the_stores_back_is_found_by_a_full_check(tmp_path: Path) -> None:
    root = write_patch_store(tmp_path / "s", *_arrays(), {}).root
    data = np.load(root / "images.npy", mmap_mode="r+")
    data[7, 0, 0, 0] = np.nan
    data.flush()
    del data
    PatchStore(root)  # the cheap check reads no data: sizes and statistics are unchanged
    with pytest.raises(ValueError, match=rf"{root}: images.npy holds 1 NaN/Inf values \(first in patches 0–8\)"):
        PatchStore(root, verify="full")
    data = np.load(root / "images.npy", mmap_mode="r+")
    data[7, 0, 0, 0] = 0.123  # finite but different: the recorded min/max/sum catch it
    data.flush()
    del data
    with pytest.raises(ValueError, match="patches 0–8 differ from the statistics recorded"):
        PatchStore(root, verify="full")


def test_truncated_array_is_refused_with_sizes(tmp_path: Path) -> None:
    root = write_patch_store(tmp_path / "s", *_arrays(), {}).root
    path = root / "images.npy"
    size = path.stat().st_size
    os.truncate(path, size - 64)
    with pytest.raises(ValueError, match=rf"{path}: {size - 64} bytes, the manifest records {size} bytes: truncated"):
        PatchStore(root)


def test_store_without_statistics_gets_them_once(tmp_path: Path) -> None:
    """Stores written before statistics existed: computed in one pass at the first open, then recorded."""
    root = write_patch_store(tmp_path / "s", *_arrays(), {}).root
    recorded = _strip_statistics(root)
    with pytest.warns(UserWarning, match="written without statistics: computed once over 9 patches"):
        store = PatchStore(root)
    assert store.manifest["statistics"] == recorded
    assert json.loads((root / "manifest.json").read_text())["statistics"] == recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PatchStore(root)
    # an old store holding NaN is refused at that first open
    data = np.load(root / "images.npy", mmap_mode="r+")
    data[2, 0, 1, 1] = np.inf
    data.flush()
    del data
    _strip_statistics(root)
    with pytest.raises(ValueError, match=rf"{root}: images.npy holds 1 NaN/Inf"):
        PatchStore(root)


# --------------------------------------------------------------------------- what may be replaced
def test_only_a_patch_store_is_replaced(tmp_path: Path) -> None:
    images, labels = _arrays()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"mine: a folder that is not a patch store .*thesis.tex"):
            write_patch_store(mine, images, labels, {}, overwrite=overwrite)
    assert (mine / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(mine)) == ["thesis.tex"]
    (tmp_path / "empty").mkdir()
    assert len(write_patch_store(tmp_path / "empty", images, labels, {})) == 9  # an empty folder is accepted
    store = write_patch_store(tmp_path / "store", images, labels, {}).root
    (store / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="also holds other files \\(notes.txt\\)"):
        write_patch_store(store, images[:2], labels[:2], {}, overwrite=True)
    (store / "notes.txt").unlink()
    assert len(write_patch_store(store, images[:2], labels[:2], {}, overwrite=True)) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        check_store_target(tmp_path / "file", overwrite=True)


# --------------------------------------------------------------------------- orphaned temporary folders
def _killed_writer(root: Path) -> Path:
    """A real writer process killed (SIGKILL) after filling its temporary folder: what a killed run leaves."""
    code = ("import os, signal, sys; from pathlib import Path; from datamodules.store_folders import make_tmp_dir;"
            "t = make_tmp_dir(Path(sys.argv[1])); (t / 'images.npy').write_bytes(b'0' * 100000);"
            "print(t, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return Path(proc.stdout.strip())


def test_orphans_of_killed_writes_are_removed_by_the_next_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    orphan = _killed_writer(root)
    other_target = _killed_writer(tmp_path / "other")
    assert orphan.is_dir() and orphan.name.startswith(".store.tmp-") and other_target.is_dir()
    live = tmp_path / f".store.tmp-{host_tag()}-{os.getppid()}-0123abcd"  # a writer that still runs (our parent)
    legacy_fresh, legacy_stale = tmp_path / ".store.tmp-89abcdef", tmp_path / ".store.tmp-fedcba98"
    replaced = tmp_path / ".store.old-00112233"
    for folder in (live, legacy_fresh, legacy_stale, replaced):
        folder.mkdir()
        (folder / "images.npy").write_bytes(b"0" * 10)
    two_hours_ago = time.time() - 7200
    for p in (legacy_stale / "images.npy", legacy_stale):
        os.utime(p, (two_hours_ago, two_hours_ago))
    write_patch_store(root, *_arrays(), {})
    assert not orphan.exists() and not legacy_stale.exists() and not replaced.exists()
    assert live.is_dir() and legacy_fresh.is_dir() and other_target.is_dir()  # not ours, or maybe still writing
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".store.")) == sorted(
        [live.name, legacy_fresh.name])
