"""On-disk patch store: memory-mapped .npy arrays + manifest.json, used as the patch cache of a cohort
and as the container of synthetic (GAN-generated) patch sets.

Layout of a store folder: images.npy (N,1,*patch) float32 raw intensities, labels.npy (N,1,*patch) uint8,
patient_ids.npy (N,) str, centres.npy (N,3) int64 (-1 for synthetic), manifest.json. A store is written into
a temporary sibling folder and renamed into place, so a folder with that name is always complete; only a patch
store is ever replaced, and temporary folders of killed writers go at the next write (`datamodules.store_folders`).
The manifest keeps statistics of the arrays (`datamodules.store_stats`), checked whenever a store is opened:
a store holding NaN/Inf, or whose files were truncated, is refused with the store and the array named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from datamodules.cohort import PatientRecord, load_patient
from datamodules import patches as patches_mod
from datamodules.patches import PatchSettings
from datamodules.store_folders import check_store_target, is_patch_store, make_tmp_dir, publish, remove_orphans
from datamodules.store_stats import (ArrayStats, Verify, block_rows, check_sizes, nonfinite_message, statistics_record,
                                     verify_store)

STORE_VERSION = 1
HASH_CACHE_NAME = "source_hashes.json"
__all__ = ["HASH_CACHE_NAME", "STORE_VERSION", "PatchStore", "build_patch_store", "check_store_target", "file_sha256",
           "is_patch_store", "remove_orphans", "store_key", "write_patch_store"]


class PatchStore:
    """Read-only view of a store folder; arrays are memmaps so opening is cheap and workers share pages.

    Opening checks the manifest's statistics and the file sizes (no data read); `verify="full"` rereads every
    array and compares it with the statistics recorded at writing.
    """

    def __init__(self, root: str | Path, verify: Verify = "stats") -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: missing file (not a patch store, or an incomplete one)")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: not valid JSON ({err}): damaged patch store manifest") from err
        version = self.manifest.get("store_version")
        if version != STORE_VERSION:
            raise ValueError(f"{manifest_path}: patch store format version {version}, expected {STORE_VERSION}")
        check_sizes(self.root, self.manifest.get("statistics") or {})
        self.images: np.ndarray = _load_array(self.root / "images.npy", mmap=True)
        self.labels: np.ndarray = _load_array(self.root / "labels.npy", mmap=True)
        self.patient_ids: np.ndarray = _load_array(self.root / "patient_ids.npy")
        self.centres: np.ndarray = _load_array(self.root / "centres.npy")
        verify_store(self.root, self.manifest, {"images": self.images, "labels": self.labels}, verify)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[2:])

    def indices_for(self, patient_ids: Iterable[str]) -> np.ndarray:
        """Indices of the patches of the given patients (patients are paired by id, never by order)."""
        return np.flatnonzero(np.isin(self.patient_ids, np.asarray(list(patient_ids), dtype=str)))


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: cannot read this patch store array ({err}): truncated or damaged") from err


# ----------------------------------------------------------------------------- source hashing
def _load_hash_cache(cache_file: Path | None) -> dict:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        return json.loads(cache_file.read_text())
    except json.JSONDecodeError:
        return {}


def file_sha256(path: str | Path, cache: dict | None = None) -> str:
    """sha256 of a file's bytes; `cache` maps resolved path -> [size, mtime_ns, sha] so unchanged files are
    not reread (a changed file changes size or mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    hit = cache.get(key) if cache is not None else None
    if hit and hit[:2] == stamp:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = [*stamp, digest]
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def source_entries(records: Sequence[PatientRecord], cache_file: Path | None = None) -> dict[str, dict]:
    """{patient_id: {kind: {path, sha256}}}, with hashes cached in `cache_file` (JSON)."""
    cache = _load_hash_cache(cache_file)
    before = dict(cache)
    out = {
        r.patient_id: {kind: {"path": str(p), "sha256": file_sha256(p, cache)} for kind, p in r.files().items()}
        for r in records
    }
    if cache_file is not None and cache != before:
        _atomic_write_text(cache_file, json.dumps(cache))
    return out


def store_key(settings: PatchSettings, sources: dict[str, dict]) -> str:
    """Cache key: any change in settings, store format, patient set or source bytes gives a new key."""
    content = {
        "store_version": STORE_VERSION,
        "settings": settings.to_dict(),
        "sources": {pid: {k: v["sha256"] for k, v in files.items()} for pid, files in sorted(sources.items())},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- writing
def _write_meta(folder: Path, patient_ids: np.ndarray, centres: np.ndarray, manifest: dict,
                stats: tuple[ArrayStats, ArrayStats]) -> None:
    np.save(folder / "patient_ids.npy", np.asarray(patient_ids, dtype=str))
    np.save(folder / "centres.npy", np.asarray(centres, dtype=np.int64))
    _write_manifest(folder, manifest, stats)


def _write_manifest(folder: Path, manifest: dict, stats: tuple[ArrayStats, ArrayStats]) -> None:
    """Statistics (with the sizes of the array files, all written by now), then the manifest: written last, it
    marks the folder complete."""
    manifest = dict(manifest, statistics=statistics_record(*stats, folder))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _base_manifest(manifest: dict, n: int, patch_size: Sequence[int]) -> dict:
    out = dict(manifest)
    out.update(store_version=STORE_VERSION, created=datetime.now(timezone.utc).isoformat(),
               n_patches=int(n), patch_size=[int(s) for s in patch_size])
    return out


def write_patch_store(root: str | Path, images: np.ndarray, labels: np.ndarray, manifest: dict,
                      patient_ids: Sequence[str] | np.ndarray | None = None, centres: np.ndarray | None = None,
                      overwrite: bool = False) -> PatchStore:
    """Write a store from arrays (e.g. GAN samples). Labels must already be {0,1}: they are not thresholded here."""
    root = Path(root)
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise ValueError(f"{root}: images must be (N,1,H,W) or (N,1,H,W,D), got {images.shape}")
    if labels.shape != images.shape:
        raise ValueError(f"{root}: labels shape {labels.shape} differs from images shape {images.shape}")
    check_store_target(root, overwrite)
    stats = ArrayStats("images"), ArrayStats("labels")
    step = block_rows(images)
    for i in range(0, len(images), step):  # blocks: full-size boolean temporaries would be GBs
        block = stats[0].add(i, images[i:i + step].astype(np.float32, copy=False))
        if block[2]:
            raise ValueError(nonfinite_message(root, "images", block))
        lab = labels[i:i + step]
        if ((lab != 0) & (lab != 1)).any():
            raise ValueError(f"{root}: labels are not binary {{0,1}} (threshold them before writing)")
        stats[1].add(i, lab.astype(np.uint8, copy=False))
    n = len(images)
    pids = np.full(n, "synthetic") if patient_ids is None else np.asarray(patient_ids, dtype=str)
    cen = np.full((n, 3), -1, np.int64) if centres is None else np.asarray(centres, dtype=np.int64)
    if pids.shape != (n,) or cen.shape != (n, 3):
        raise ValueError(f"{root}: patient_ids must be ({n},) and centres ({n}, 3), got {pids.shape}, {cen.shape}")
    tmp = make_tmp_dir(root)
    try:
        np.save(tmp / "images.npy", images.astype(np.float32, copy=False))
        np.save(tmp / "labels.npy", labels.astype(np.uint8, copy=False))
        _write_meta(tmp, pids, cen, _base_manifest(manifest, n, images.shape[2:]), stats)
        publish(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PatchStore(root)


def _n_per_patient(settings: PatchSettings) -> int:
    n_grid = int(np.prod(settings.grid)) if settings.is_3d else 0
    return n_grid + settings.n_vessel + settings.n_random


def _extract_into(records: Sequence[PatientRecord], settings: PatchSettings, tmp: Path, progress: bool,
                  stats: tuple[ArrayStats, ArrayStats], where: Path) -> dict:
    """Extract every patient into preallocated memmaps in tmp, accumulating the statistics per patient (a
    patient with NaN/Inf voxels in its patches is refused, named); returns the per-patient manifest part."""
    n_max = _n_per_patient(settings) * len(records)
    shape = (n_max, 1, *settings.patch_size)
    images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.float32, shape=shape)
    labels = open_memmap(tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=shape)
    pids, centres, patients, n = [], [], {}, 0
    for rec in tqdm(records, desc="extracting patches", unit="patient", disable=not progress):
        vol = load_patient(rec)
        ps = patches_mod.extract_patches(vol, settings)
        k = len(ps)
        block = stats[0].add(n, ps.images)
        if block[2]:
            raise ValueError(f"{where}: patient {rec.patient_id} ({rec.files().get('image')}) gives patches with"
                             f" {block[2]} NaN/Inf values: refusing a store that would train on NaN")
        stats[1].add(n, ps.labels)
        images[n:n + k], labels[n:n + k] = ps.images, ps.labels
        pids += [rec.patient_id] * k
        centres.append(ps.centres)
        patients[rec.patient_id] = {"spacing": list(vol.spacing), "shape": list(vol.image.shape), "n_patches": k,
                                    "n_by_kind": np.bincount(ps.kinds, minlength=3).tolist()}
        n += k
    images.flush(), labels.flush()
    if n < n_max:  # some patient had too few candidates: rewrite at the exact size
        for name, arr in (("images.npy", images), ("labels.npy", labels)):
            exact = open_memmap(tmp / f"exact_{name}", mode="w+", dtype=arr.dtype, shape=(n, *shape[1:]))
            exact[:] = arr[:n]
            exact.flush()
            del exact
            os.replace(tmp / f"exact_{name}", tmp / name)
    del images, labels
    np.save(tmp / "patient_ids.npy", np.asarray(pids, dtype=str))
    np.save(tmp / "centres.npy", np.concatenate(centres) if centres else np.zeros((0, 3), np.int64))
    return {"n_patches": n, "patients": patients}


def build_patch_store(records: Sequence[PatientRecord], root: str | Path, settings: PatchSettings,
                      progress: bool = True) -> PatchStore:
    """Open the cached store for (records, settings) under root/<key>/, extracting it first if absent."""
    root = Path(root)
    if not records:
        raise ValueError("build_patch_store: no patient records given")
    sources = source_entries(records, root / HASH_CACHE_NAME)
    key = store_key(settings, sources)
    target = root / key
    if (target / "manifest.json").is_file():
        return PatchStore(target)
    if target.exists():  # not written by us (we only rename complete folders into place): distrust it
        shutil.rmtree(target)
    tmp = make_tmp_dir(target)
    try:
        stats = ArrayStats("images"), ArrayStats("labels")
        part = _extract_into(records, settings, tmp, progress, stats, target)
        manifest = _base_manifest({"kind": "real", "key": key, "settings": settings.to_dict()},
                                  part["n_patches"], settings.patch_size)
        for pid, entry in part["patients"].items():
            entry["sources"] = sources[pid]
        manifest["patients"] = part["patients"]
        _write_manifest(tmp, manifest, stats)
        publish(tmp, target, overwrite=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PatchStore(target)
