"""Cohort reader: layouts, and one CohortError per kind of bad input, naming the file and the problem."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from datamodules.cohort import CohortError, PatientRecord, discover_cohort, has_cohort_files, load_patient
from tests.fixtures_cohort import tiny_affine, tiny_patient, write_nifti, write_tiny_cohort


@pytest.fixture
def patient(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    image, label, brain = tiny_patient(seed=3)
    d = tmp_path / "c" / "a01"
    write_nifti(d / "image.nii.gz", image)
    write_nifti(d / "label.nii.gz", label)
    write_nifti(d / "brain_mask.nii.gz", brain)
    return d, image, label, brain


def _rec(d: Path, mask: bool = True) -> PatientRecord:
    return PatientRecord(d.name, d / "image.nii.gz", d / "label.nii.gz", d / "brain_mask.nii.gz" if mask else None)


def test_folder_layout_roundtrip(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "c", n_patients=3)
    recs = discover_cohort(root)
    assert [r.patient_id for r in recs] == ["p000", "p001", "p002"]
    vol = load_patient(recs[1])
    image, label, brain = tiny_patient(seed=1)
    np.testing.assert_allclose(vol.image, image, rtol=1e-6)
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8 and vol.brain_mask.dtype == bool
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_array_equal(vol.brain_mask, brain.astype(bool))
    assert vol.spacing == pytest.approx((0.5, 0.5, 0.7))
    np.testing.assert_allclose(vol.affine, tiny_affine())
    assert vol.image_path.endswith("p001/image.nii.gz")


def test_manifest_layout_and_optional_mask(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "c", n_patients=2, manifest=True, with_brain_mask=False)
    assert has_cohort_files(root) and not has_cohort_files(tmp_path / "nothing")
    recs = discover_cohort(root)
    assert [r.patient_id for r in recs] == ["p000", "p001"] and recs[0].brain_mask is None
    assert recs[0].image == root / "data" / "p000_image.nii.gz"
    assert load_patient(recs[0]).brain_mask is None


def test_manifest_duplicate_ids(tmp_path: Path) -> None:
    root = write_tiny_cohort(tmp_path / "c", n_patients=2, manifest=True)
    rows = list(csv.DictReader(open(root / "cohort.csv")))
    rows[1]["patient_id"] = rows[0]["patient_id"]
    with open(root / "cohort.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CohortError, match=r"cohort\.csv.*duplicate patient_id 'p000'"):
        discover_cohort(root)


def test_missing_file(tmp_path: Path, patient) -> None:
    d = patient[0]
    (d / "label.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"a01/label\.nii\.gz: missing file"):
        discover_cohort(d.parent)
    with pytest.raises(CohortError, match=r"a01/label\.nii\.gz: missing file"):
        load_patient(_rec(d))


def test_shape_mismatch(patient) -> None:
    d, _, label, _ = patient
    write_nifti(d / "label.nii.gz", label[:, :, :-1])
    with pytest.raises(CohortError, match=r"a01/label\.nii\.gz: label shape \(40, 40, 11\) does not match"):
        load_patient(_rec(d))


def test_affine_mismatch_and_tolerance(patient) -> None:
    d, _, label, brain = patient
    aff = tiny_affine()
    aff[0, 3] += 1e-5  # float round-off: accepted
    write_nifti(d / "label.nii.gz", label, aff)
    load_patient(_rec(d))
    aff[0, 0] = -aff[0, 0]  # x flip: refused
    write_nifti(d / "brain_mask.nii.gz", brain, aff)
    with pytest.raises(CohortError, match=r"a01/brain_mask\.nii\.gz: brain mask affine does not match"):
        load_patient(_rec(d))


@pytest.mark.parametrize("values", [(0, 255), (0, 2), (0.0, 0.5)])
def test_non_binary_label(patient, values) -> None:
    d, _, label, _ = patient
    bad = np.where(label > 0, values[1], values[0]).astype(np.float32 if isinstance(values[1], float) else np.uint8)
    write_nifti(d / "label.nii.gz", bad)
    with pytest.raises(CohortError, match=r"a01/label\.nii\.gz: label is not binary.*" + str(values[1])):
        load_patient(_rec(d))


def test_float_label_01_is_accepted(patient) -> None:
    d, _, label, _ = patient
    write_nifti(d / "label.nii.gz", label.astype(np.float32))
    vol = load_patient(_rec(d))
    assert vol.label.dtype == np.uint8
    np.testing.assert_array_equal(vol.label, label)


def test_int16_image_read_as_float32(patient) -> None:
    d, image, _, _ = patient
    write_nifti(d / "image.nii.gz", np.round(image).astype(np.int16))
    vol = load_patient(_rec(d))
    assert vol.image.dtype == np.float32
    np.testing.assert_array_equal(vol.image, np.round(image))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_image(patient, bad) -> None:
    d, image, _, _ = patient
    image = image.copy()
    image[3, 4, 5] = bad
    image[1, 1, 1] = bad
    write_nifti(d / "image.nii.gz", image)
    with pytest.raises(CohortError, match=r"a01/image\.nii\.gz: image has 2 NaN/Inf voxel"):
        load_patient(_rec(d))


def test_empty_label(patient) -> None:
    d, _, label, _ = patient
    write_nifti(d / "label.nii.gz", np.zeros_like(label))
    with pytest.raises(CohortError, match=r"a01/label\.nii\.gz: label is empty"):
        load_patient(_rec(d))


@pytest.mark.parametrize("shape", [(40, 40, 12, 2), (40, 40, 12, 1), (40, 40)])
def test_non_3d_image(patient, shape) -> None:
    d = patient[0]
    write_nifti(d / "image.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(CohortError, match=rf"a01/image\.nii\.gz: image must be a 3D volume, got {len(shape)}D"):
        load_patient(_rec(d))


def test_brain_mask_mismatch_shape_and_values(patient) -> None:
    d, _, _, brain = patient
    write_nifti(d / "brain_mask.nii.gz", brain[:-2])
    with pytest.raises(CohortError, match=r"brain_mask\.nii\.gz: brain mask shape \(38, 40, 12\) does not match"):
        load_patient(_rec(d))
    write_nifti(d / "brain_mask.nii.gz", brain * 255)
    with pytest.raises(CohortError, match=r"brain_mask\.nii\.gz: brain mask is not binary"):
        load_patient(_rec(d))


def test_empty_or_missing_cohort(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="does not exist"):
        discover_cohort(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match="no patients found"):
        discover_cohort(tmp_path / "empty")


@pytest.mark.parametrize("kind", ["image", "label"])
def test_truncated_nifti_names_the_file(patient, kind) -> None:
    """nib.load reads only the header: the voxels of a cut-off .nii.gz must be read inside the validation."""
    d = patient[0]
    path = d / f"{kind}.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CohortError, match=rf"a01/{kind}\.nii\.gz: cannot read the {kind} voxels"):
        load_patient(_rec(d))


def test_manifest_with_bom_and_spaces_after_commas(tmp_path: Path) -> None:
    """Spreadsheet exports: a UTF-8 byte-order mark and "a, b" separators are accepted."""
    root = write_tiny_cohort(tmp_path / "c", n_patients=2, manifest=True)
    lines = (root / "cohort.csv").read_text().splitlines()
    text = "\n".join(", ".join(cell.strip() for cell in line.split(",")) for line in lines) + "\n"
    (root / "cohort.csv").write_bytes("\ufeff".encode() + text.encode())
    assert (root / "cohort.csv").read_bytes().startswith(b"\xef\xbb\xbfpatient_id, image, label")
    recs = discover_cohort(root)
    assert [r.patient_id for r in recs] == ["p000", "p001"]
    assert recs[0].image == root / "data" / "p000_image.nii.gz" and recs[0].brain_mask is not None
    load_patient(recs[1])
