"""Patch store: contents, cache reuse and invalidation, atomic builds, synthetic stores."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import datamodules.patches as patches_mod
from datamodules.cohort import discover_cohort, load_patient
from datamodules.patch_store import (HASH_CACHE_NAME, STORE_VERSION, PatchStore, build_patch_store,
                                     file_sha256, write_patch_store)
from datamodules.patches import PatchSettings
from tests.fixtures_cohort import tiny_patient, write_nifti, write_tiny_cohort

SETTINGS = PatchSettings((12, 12), n_vessel=5, n_random=6, seed=0)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return write_tiny_cohort(tmp_path / "cohort", n_patients=3)


@pytest.fixture
def count_extractions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = patches_mod.extract_patches

    def counting(vol, settings):
        calls.append(vol.patient_id)
        return real(vol, settings)

    monkeypatch.setattr(patches_mod, "extract_patches", counting)
    return calls


def test_build_contents_and_manifest(cohort: Path, tmp_path: Path) -> None:
    recs = discover_cohort(cohort)
    store = build_patch_store(recs, tmp_path / "cache", SETTINGS, progress=False)
    assert len(store) == 33 and store.images.shape == (33, 1, 12, 12) and store.labels.dtype == np.uint8
    assert isinstance(store.images, np.memmap) and not store.images.flags.writeable
    m = store.manifest
    assert m["store_version"] == STORE_VERSION and m["settings"] == SETTINGS.to_dict() and m["n_patches"] == 33
    assert "created" in m and m["patch_size"] == [12, 12]
    p1 = m["patients"]["p001"]
    assert p1["spacing"] == pytest.approx([0.5, 0.5, 0.7]) and p1["n_patches"] == 11
    img_path = Path(p1["sources"]["image"]["path"])
    assert p1["sources"]["image"]["sha256"] == hashlib.sha256(img_path.read_bytes()).hexdigest()
    # arrays equal a direct extraction of each patient, paired by patient id
    for rec in recs:
        ps = patches_mod.extract_patches(load_patient(rec), SETTINGS)
        idx = store.indices_for([rec.patient_id])
        np.testing.assert_array_equal(store.images[idx], ps.images)
        np.testing.assert_array_equal(store.labels[idx], ps.labels)
        np.testing.assert_array_equal(store.centres[idx], ps.centres)
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in (tmp_path / "cache").iterdir())


def test_cache_reuse_and_invalidation(cohort: Path, tmp_path: Path, count_extractions: list[str]) -> None:
    recs = discover_cohort(cohort)
    cache = tmp_path / "cache"
    a = build_patch_store(recs, cache, SETTINGS, progress=False)
    assert count_extractions == ["p000", "p001", "p002"]
    mtime = (a.root / "images.npy").stat().st_mtime_ns
    b = build_patch_store(recs, cache, SETTINGS, progress=False)
    assert b.root == a.root and len(count_extractions) == 3  # reused: nothing re-extracted
    assert (b.root / "images.npy").stat().st_mtime_ns == mtime

    c = build_patch_store(recs, cache, PatchSettings((12, 12), n_vessel=5, n_random=7), progress=False)
    assert c.root != a.root and len(count_extractions) == 6 and len(c) == 36  # changed setting

    image, _, _ = tiny_patient(seed=1)
    write_nifti(cohort / "p001" / "image.nii.gz", image * 2)  # changed source file
    d = build_patch_store(recs, cache, SETTINGS, progress=False)
    assert d.root != a.root and len(count_extractions) == 9
    np.testing.assert_allclose(d.images[d.indices_for(["p001"])], 2 * a.images[a.indices_for(["p001"])])
    np.testing.assert_array_equal(d.images[d.indices_for(["p000"])], a.images[a.indices_for(["p000"])])

    e = build_patch_store(recs[:2], cache, SETTINGS, progress=False)  # different patient set
    assert e.root not in (a.root, d.root) and len(e) == 22


def test_interrupted_build_is_not_reused(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = discover_cohort(cohort)
    real = patches_mod.extract_patches

    def failing(vol, settings):
        if vol.patient_id == "p001":
            raise KeyboardInterrupt
        return real(vol, settings)

    monkeypatch.setattr(patches_mod, "extract_patches", failing)
    with pytest.raises(KeyboardInterrupt):
        build_patch_store(recs, tmp_path / "cache", SETTINGS, progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [HASH_CACHE_NAME]  # no store, no tmp left
    monkeypatch.setattr(patches_mod, "extract_patches", real)
    assert len(build_patch_store(recs, tmp_path / "cache", SETTINGS, progress=False)) == 33


def test_hash_cache_keyed_on_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    st = f.stat()
    cache = {str(f.resolve()): [st.st_size, st.st_mtime_ns, "cached-digest"]}
    assert file_sha256(f, cache) == "cached-digest"  # not reread
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_sha256(f, cache) == hashlib.sha256(b"abc").hexdigest()
    assert cache[str(f.resolve())][2] == hashlib.sha256(b"abc").hexdigest()


def test_write_synthetic_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (7, 1, 8, 8)).astype(np.float64)
    labels = (rng.random((7, 1, 8, 8)) > 0.8).astype(np.float32)
    store = write_patch_store(tmp_path / "syn", images, labels, {"generator": "wgan", "label_threshold": 0.0})
    assert len(store) == 7 and store.images.dtype == np.float32 and store.labels.dtype == np.uint8
    np.testing.assert_allclose(store.images, images.astype(np.float32))
    np.testing.assert_array_equal(store.labels, labels)
    assert set(store.patient_ids.tolist()) == {"synthetic"} and (store.centres == -1).all()
    m = json.loads((tmp_path / "syn" / "manifest.json").read_text())
    assert m["generator"] == "wgan" and m["store_version"] == STORE_VERSION and m["n_patches"] == 7
    assert PatchStore(tmp_path / "syn").manifest == m
    with pytest.raises(FileExistsError, match="already exists"):
        write_patch_store(tmp_path / "syn", images, labels, {})
    assert len(write_patch_store(tmp_path / "syn", images[:3], labels[:3], {}, overwrite=True)) == 3
    with pytest.raises(ValueError, match="not binary"):
        write_patch_store(tmp_path / "bad", images, labels * 0.5, {})
    with pytest.raises(ValueError, match="labels shape"):
        write_patch_store(tmp_path / "bad", images, labels[:, :, :4], {})
    assert not (tmp_path / "bad").exists()
