"""Write one DSC-MRI patient in the perfusion cohort layout, all or nothing.

Layout (/work/notes_tmp/perfusion_interface.md): <pid>/dsc.nii.gz (X,Y,Z,T float32, zooms (sx,sy,sz,TR), units
mm/sec), brain_mask.nii.gz (uint8), truth/<map>.nii.gz and pipeline/<map>.nii.gz (float32, physical units),
meta.json. The patient is written into a hidden temporary folder beside its final place and renamed in one step,
so an interrupted run never leaves a half-written patient; temporary folders of dead writers are removed on the
next write.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from simulation.nifti_io import ras_affine

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
MAP_UNITS = {"cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s", "ttp": "s"}
TMP_MARK = ".tmp-"


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, tr: float | None = None) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(tr)))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def patient_written(folder: Path) -> bool:
    """A patient folder exists only once complete (it is renamed into place after all files are written)."""
    return (folder / "meta.json").is_file() and (folder / "dsc.nii.gz").is_file()


def remove_stale_tmp(root: Path) -> None:
    """Remove temporary patient folders left by killed writers on this host (their process no longer exists)."""
    host = socket.gethostname()
    for p in root.glob(f".*{TMP_MARK}*"):
        parts = p.name.split(TMP_MARK, 1)[1].split("-")
        if len(parts) >= 2 and "-".join(parts[:-2]) == host and parts[-2].isdigit():
            try:
                os.kill(int(parts[-2]), 0)
                continue  # still running
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except PermissionError:
                continue


def write_dsc_patient(
    folder: Path,
    series: np.ndarray,
    mask: np.ndarray,
    truth: Mapping[str, np.ndarray],
    pipeline: Mapping[str, np.ndarray],
    meta: dict,
    spacing: tuple[float, float, float],
) -> Path:
    """series (X,Y,Z,T); meta must hold TR and TE (s). An existing folder of the same patient is removed just before
    the finished one is renamed into place: a crash in between leaves no folder for it, never a partial one."""
    folder = Path(folder)
    tr = float(meta["TR"])
    affine = ras_affine(spacing, tuple(series.shape[:3]))
    tmp = folder.parent / f".{folder.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "truth").mkdir(parents=True)
        (tmp / "pipeline").mkdir()
        _save(np.asarray(series, np.float32), affine, tmp / "dsc.nii.gz", tr=tr)
        _save(np.asarray(mask > 0, np.uint8), affine, tmp / "brain_mask.nii.gz")
        for kind, maps in (("truth", truth), ("pipeline", pipeline)):
            for name in MAP_NAMES:
                _save(np.asarray(maps[name], np.float32), affine, tmp / kind / f"{name}.nii.gz")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_json_atomic(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)
