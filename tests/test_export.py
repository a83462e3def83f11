"""workflows.export: NIfTI / npz round trip with the documented geometry, card ε = checkpoint ε, no identifying
string in any written file, refusal of a leaking non-DP export, atomic publication."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import lightning
import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.patch_store import PatchStore
from lightning_modules.wgan import WGANGP
from metrics.membership import evaluate_attack
from networks.gan2d import Generator2D, WGANCritic2D
from workflows.export import ExportRefused, export
from workflows.synthesize import synthesize

SIZE = 24
PATIENTS = [f"patient-secret-{i:04d}" for i in range(6)]
COHORT = "/hospital/secret-cohort"
SOURCE_HASHES = [hashlib.sha256(p.encode()).hexdigest() for p in PATIENTS]
PRIVACY = {"unit": "patient", "epsilon": 7.25, "delta": 1e-3, "noise_multiplier": 0.9, "sample_rate": 0.1, "steps": 500,
           "accountant": "rdp", "private": True}


def write_run(folder: Path, privacy: dict | None) -> Path:
    """GAN checkpoint + the run_manifest.json of its run (patient ids, paths and hashes the export must not leak)."""
    torch.manual_seed(0)
    model = WGANGP(Generator2D(8, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE), latent_dim=8)
    (folder / "checkpoints").mkdir(parents=True)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "gan_class": "lightning_modules.wgan.WGANGP",
            "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0, "privacy": privacy}
    torch.save(ckpt, folder / "checkpoints" / "gan.ckpt")
    data = {"cohort_dir": COHORT, "splits": {"train": PATIENTS[:4], "val": PATIENTS[4:5], "test": PATIENTS[5:]},
            "sources": {p: {"image": {"path": f"{COHORT}/{p}/image.nii.gz", "sha256": h}} for p, h in zip(PATIENTS, SOURCE_HASHES)}}
    manifest = {"data": data, "data_manifest_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()}
    (folder / "run_manifest.json").write_text(json.dumps(manifest))
    return folder / "checkpoints" / "gan.ckpt"


def write_audit(path: Path, checkpoint: Path, member_shift: float) -> str:
    """An audit.json as `tofgan audit` writes it (members scored `member_shift` higher)."""
    rng = np.random.default_rng(0)
    pid_in, pid_out = np.repeat(np.arange(4), 30), np.repeat(np.arange(2), 30)
    result = evaluate_attack(rng.normal(member_shift, 1, 120), pid_in, rng.normal(0, 1, 60), pid_out, n_boot=100)
    from workflows.audit_report import leakage_summary

    report = {"checkpoint": str(checkpoint), "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
              "roles": {}, "counts": {k: {"patients": n, "patches": 30 * n} for k, n in
                                      (("members", 4), ("nonmembers", 2), ("reference", 1))},
              "results": {"pixels/nn": result}, "reference_run": {"kind": "real", "results": {"pixels/nn": result}},
              "ci": "95 %"}
    report["leakage"] = leakage_summary(report["results"], report["reference_run"]["results"])
    from workflows.export import jsonable

    path.write_text(json.dumps(jsonable(report)))
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    dp_ckpt, plain_ckpt = write_run(root / "dp_run", PRIVACY), write_run(root / "plain_run", None)
    return {"dp": synthesize(str(dp_ckpt), str(root / "dp_store"), n_samples=10, batch_size=4),
            "plain": synthesize(str(plain_ckpt), str(root / "plain_store"), n_samples=6, batch_size=4),
            "dp_ckpt": dp_ckpt, "plain_ckpt": plain_ckpt, "root": root}


def private_strings(stores) -> list[str]:
    return [*PATIENTS, COHORT, *SOURCE_HASHES, str(stores["root"]), str(stores["dp_ckpt"]), "secret"]


def readable_bytes(path: Path) -> bytes:
    """A file's content as stored and, for compressed files, decompressed too (strings hide inside gzip/npz)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        return raw + gzip.decompress(raw)
    if path.suffix == ".npz":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            return raw + b"".join(z.read(n) for n in z.namelist())
    return raw


def assert_nothing_identifying(out: Path, stores) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for p in files:
        content = readable_bytes(p)
        for secret in private_strings(stores):
            assert secret.encode() not in content, f"{secret!r} in {p.relative_to(out)}"
            assert secret.encode("utf-16-le") not in content


def verify_checksums(out: Path) -> None:
    lines = (out / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_nifti_export_round_trips_with_geometry_and_card_epsilon(stores, tmp_path):
    out = export(str(stores["dp"]), str(tmp_path / "ds"), shard_size=4, spacing=[0.4, 0.4, 0.8], licence="CC BY 4.0")
    card = json.loads((out / "dataset_card.json").read_text())
    ckpt = torch.load(stores["dp_ckpt"], weights_only=True)
    assert card["privacy"]["epsilon"] == ckpt["privacy"]["epsilon"] == 7.25
    assert card["privacy"]["formal_guarantee"] and card["privacy"]["unit"] == "patient"
    assert (card["privacy"]["sigma"], card["privacy"]["q"], card["privacy"]["steps"]) == (0.9, 0.1, 500)
    assert card["licence"] == "CC BY 4.0" and card["n_samples"] == 10 and card["layout"]["shards"] == 3
    assert card["training_cohort"]["n_patients"] == {"train": 4, "val": 1, "test": 1}
    assert len(card["training_cohort"]["manifest_sha256"]) == 64 and card["export_decision"]["refused_without_flag"] is False
    store = PatchStore(stores["dp"])
    affine = np.diag([0.4, 0.4, 0.8, 1.0])
    for i in range(10):
        folder = out / "data" / f"shard_{i // 4:03d}"
        img, lab = nib.load(folder / f"sample_{i:06d}_image.nii.gz"), nib.load(folder / f"sample_{i:06d}_label.nii.gz")
        np.testing.assert_array_equal(img.get_fdata(dtype=np.float32)[..., 0], store.images[i, 0])
        np.testing.assert_array_equal(np.asarray(lab.dataobj)[..., 0], store.labels[i, 0])
        assert lab.get_data_dtype() == np.uint8 and img.shape == (SIZE, SIZE, 1)
        np.testing.assert_allclose(img.affine, affine)
        np.testing.assert_allclose(lab.header.get_zooms(), (0.4, 0.4, 0.8))
    np.testing.assert_allclose(card["geometry"]["affine"], affine)
    assert "7.25" in (out / "DATASET_CARD.md").read_text()
    verify_checksums(out)
    assert_nothing_identifying(out, stores)
    with pytest.raises(AssertionError):  # the scan does find what the source store itself holds (checkpoint path)
        assert_nothing_identifying(Path(stores["dp"]), stores)


def test_npz_export_round_trips(stores, tmp_path):
    out = export(str(stores["dp"]), str(tmp_path / "ds"), format="npz", shard_size=6)
    store = PatchStore(stores["dp"])
    with np.load(out / "data" / "shard_001.npz") as shard:
        np.testing.assert_array_equal(shard["images"], store.images[6:10])
        np.testing.assert_array_equal(shard["labels"], store.labels[6:10])
        assert list(shard["index"]) == [6, 7, 8, 9]
    verify_checksums(out)
    assert_nothing_identifying(out, stores)


def test_non_dp_export_is_refused_when_leaking_or_unaudited(stores, tmp_path):
    plain = str(stores["plain"])
    with pytest.raises(ExportRefused, match="no membership-inference audit"):
        export(plain, str(tmp_path / "a"))
    leaking = write_audit(tmp_path / "leak.json", stores["plain_ckpt"], member_shift=3.0)
    with pytest.raises(ExportRefused, match="shows leakage"):
        export(plain, str(tmp_path / "a"), audit=leaking)
    assert not (tmp_path / "a").exists()
    out = export(plain, str(tmp_path / "a"), audit=leaking, accept_leakage_risk=True, format="npz")
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["export_decision"]["refused_without_flag"] and card["export_decision"]["accept_leakage_risk"]
    assert card["privacy"]["statement"] == "no formal privacy guarantee" and card["privacy"]["epsilon"] is None
    assert "accept_leakage_risk" in (out / "DATASET_CARD.md").read_text()
    assert card["membership_audit"]["results"]["pixels/nn"]["patient"]["auc"] > 0.9
    assert_nothing_identifying(out, stores)
    clean = write_audit(tmp_path / "clean.json", stores["plain_ckpt"], member_shift=0.0)
    card = json.loads((export(plain, str(tmp_path / "b"), audit=clean, format="npz") / "dataset_card.json").read_text())
    assert not card["export_decision"]["refused_without_flag"]
    with pytest.raises(ValueError, match="audit the store's own generator"):
        export(plain, str(tmp_path / "c"), audit=write_audit(tmp_path / "other.json", stores["dp_ckpt"], 0.0))


def test_interrupted_export_leaves_nothing_a_rerun_takes_as_complete(stores, tmp_path, monkeypatch):
    import workflows.export as ex

    real, calls = ex.write_nifti_pair, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of the shards
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "write_nifti_pair", failing)
    target = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        export(str(stores["dp"]), str(target), shard_size=2)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # a killed process leaves its hidden temporary folder: the rerun neither uses nor trips over it
    (tmp_path / ".ds.export-tmp-deadbeef" / "data").mkdir(parents=True)
    monkeypatch.setattr(ex, "write_nifti_pair", real)
    out = export(str(stores["dp"]), str(target), shard_size=2)
    verify_checksums(out)
    with pytest.raises(FileExistsError, match="already exists"):
        export(str(stores["dp"]), str(target))
    export(str(stores["dp"]), str(target), format="npz", overwrite=True)
    assert (target / "data" / "shard_000.npz").is_file() and not (target / "data" / "shard_000").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a tofgan export"):
        export(str(stores["dp"]), str(tmp_path / "mine"), overwrite=True)
