"""`tofgan compare`: Table 2 layout, the ordering check, the resume ledger, and a tiny end-to-end comparison."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback

import workflows.compare as cmp
from cli import main
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort
from workflows.compare_report import index_rows, ordering, result_rows, table2

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*")
GANS = ["DCGAN", "WGAN-GP", "WGAN-GP-SN"]


def _summary(dsc: float, hd: float, split: str) -> dict:
    res = {"dsc_mean": dsc, "dsc_std": 0.01, "hd95_mean": hd, "hd95_std": 1.0, "bavd_mean": 0.1, "bavd_std": 0.0,
           "n_patients": 2}
    return {"results": {"all": res}, "split": split}


def _steps(dsc: dict[str, float]) -> dict:
    steps = {}
    for training, gan in cmp.unet_rows(GANS):
        key = f"{training}:{gan}"
        splits = {"val": _summary(dsc.get(key, 0.5) - 0.01, 30.0, "val"), "test": _summary(dsc.get(key, 0.5), 28.0, "test")}
        if training in ("real", "synthetic"):
            splits["external"] = _summary(dsc.get(key, 0.5) - 0.02, 26.0, "test")
        steps[f"unet/{training}-{gan}"] = {"training": training, "gan": gan, "epoch": 3, "val_dsc_patches": 0.6,
                                           "checkpoint": "x.ckpt", "summaries": splits}  # fmt: skip
    return steps


def test_unet_rows_follow_table_2_and_data_args_pick_the_training_sets():
    assert cmp.unet_rows(["A", "B"]) == [("real", None), ("real+synthetic", "A"), ("real+synthetic", "B"),
                                         ("synthetic", "A"), ("synthetic", "B")]
    assert cmp.unet_data_args("real", None) == []
    assert cmp.unet_data_args("real+synthetic", "/s") == ["--data.init_args.synthetic_stores", "[/s]"]
    assert cmp.unet_data_args("synthetic", "/s")[-2:] == ["--data.init_args.use_real", "false"]


def test_table2_places_every_value_and_the_ordering_check():
    steps = _steps({"synthetic:DCGAN": 0.79, "synthetic:WGAN-GP": 0.78, "synthetic:WGAN-GP-SN": 0.82, "real:None": 0.89})
    rows = result_rows(steps, GANS)
    assert len(rows) == 7 * 2 + 4  # val + test for every U-Net, external for real and synthetic-only
    table = table2(rows, GANS, "all").splitlines()
    real = next(line for line in table if "U-Net on real data" in line)
    assert "0.880 ± 0.010" in real and "0.890 ± 0.010" in real and "30.00 ± 1.00" in real and "28.00 ± 1.00" in real
    sections = [i for i, line in enumerate(table) if line.startswith("| *") and not line.startswith("| **")]
    assert [table[i].split("|")[1].strip() for i in sections] == [
        "*Augmentation (real + synthetic)*", "*Anonymisation (synthetic only)*",
        "*Evaluated on the external cohort (test patients)*"]  # fmt: skip
    external_sn = table[-1]
    assert external_sn.startswith("| WGAN-GP-SN (synthetic only) | – | 0.800 ± 0.010 | – | 26.00 ± 1.00")
    holds, values = ordering(rows, "all")
    assert holds is False and values["WGAN-GP-SN"] == pytest.approx(0.82)  # WGAN-GP < DCGAN, as in the paper's Table 2
    steps = _steps({"synthetic:DCGAN": 0.7, "synthetic:WGAN-GP": 0.7, "synthetic:WGAN-GP-SN": 0.8})
    assert ordering(result_rows(steps, GANS), "all")[0] is True  # ties count as ≥
    assert ordering(result_rows(steps, GANS), "intracranial")[0] is None


def test_ledger_resumes_only_the_same_settings(tmp_path):
    ledger = cmp.Ledger(tmp_path, {"seed": 0, "n_synthetic": 10}, resume=True)
    ledger.record("gan/A", {"store": "s"})
    again = cmp.Ledger(tmp_path, {"seed": 0, "n_synthetic": 10}, resume=True)
    assert again.get("gan/A") == {"store": "s"}
    assert cmp.Ledger(tmp_path, {"seed": 0, "n_synthetic": 10}, resume=False).get("gan/A") is None
    with pytest.raises(ValueError, match="compare_state.json.*n_synthetic, seed"):
        cmp.Ledger(tmp_path, {"seed": 1, "n_synthetic": 20}, resume=True)
    again.record("gan/A", {"store": "s", "experiment": "a.yaml"})
    again.check_gan("A", "a.yaml")
    again.check_gan("B", "b.yaml")  # a GAN added to a finished comparison
    with pytest.raises(ValueError, match="'A' was trained from a.yaml, not b.yaml"):
        again.check_gan("A", "b.yaml")


def test_fid_extractor_becomes_the_evaluation_callback_of_every_gan_fit(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt.*tofgan domain-extractor"):
        cmp.evaluation_fragment(tmp_path, str(tmp_path / "nowhere.ckpt"))
    (tmp_path / "e.ckpt").write_bytes(b"x")
    flag, path = cmp.evaluation_fragment(tmp_path, str(tmp_path / "e.ckpt"))
    (callback,) = yaml.safe_load(Path(path).read_text())["trainer"]["callbacks+"]
    assert flag == "--config" and callback["class_path"] == "callbacks.gan_evaluation.GANEvaluationCallback"
    assert callback["init_args"]["extractor_checkpoint"] == str((tmp_path / "e.ckpt").resolve())


@pytest.mark.slow
def test_tiny_comparison_end_to_end_resumes_and_shares_one_wandb_group(tmp_path, monkeypatch):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    external = write_tiny_cohort(tmp_path / "external", n_patients=6, seed=3, prefix="e")
    data = ["--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1"]
    gan_args = ["--config", str(TEST_CONFIGS / "tiny_gan.yaml"), "--data.init_args.cohort_dir", str(cohort), *data,
                "--trainer.log_every_n_steps", "1"]
    seg = ["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), *data]
    monkeypatch.chdir(tmp_path)
    out = Path("cmp")  # relative, as users type it (checkpoint folders must still be found)
    kwargs = dict(out_dir=str(out), n_synthetic=24, gan_args=gan_args, group="compare-tiny",
                  unet_args=[*seg, "--data.init_args.cohort_dir", str(cohort)],
                  external_args=[*seg, "--data.init_args.cohort_dir", str(external)])  # fmt: skip
    main(["compare", "--config", _write_config(tmp_path, kwargs)])
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    keys = {(r["training"], r["gan"], r["evaluated_on"], r["vessels"]) for r in rows}
    assert len(keys) == len(rows) == (7 * 2 + 4) * 2  # all + intracranial vessel sets
    assert all(0.0 <= float(r["dsc_mean"]) <= 1.0 for r in rows)
    assert {(r["evaluated_on"], float(r["n_patients"])) for r in rows} == {("val", 1), ("test", 2), ("external", 2)}
    state = json.loads((out / "compare_state.json").read_text())["steps"]
    assert len(state) == 3 + 7 and all(step["minutes"] > 0 for step in state.values())
    for gan in GANS:
        manifest = json.loads((Path(state[f"gan/{gan}"]["store"]) / "manifest.json").read_text())
        assert manifest["n_samples"] == 24 and manifest["source_checkpoint"] == str(Path(state[f"gan/{gan}"]["checkpoint"]).resolve())
    external_ids = {r["patient_id"] for r in csv.DictReader(open(out / "runs/unet-synthetic-dcgan/external/test_per_patient.csv"))}
    val = json.loads((out / "runs/unet-real/val/test_summary.json").read_text())
    assert external_ids and all(p.startswith("e") for p in external_ids) and val["split"] == "val"
    val_ids, test_ids = ({r["patient_id"] for r in csv.DictReader(open(out / f"runs/unet-real/{s}/test_per_patient.csv"))}
                         for s in ("val", "test"))  # fmt: skip
    assert len(val_ids) == 1 and len(test_ids) == 2 and not val_ids & test_ids
    readme = (out / "README.md").read_text()
    assert "Paper ordering on synthetic-only test DSC" in readme and (out / "comparison.png").is_file()
    assert (out / "samples.png").is_file() and (out / "gan_losses_dcgan.png").is_file()
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3 + 7 * 3 + 4  # GAN fits, U-Net fit + val + test, external tests
    assert all(b"compare-tiny" in r.read_bytes() for r in runs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(cmp, "fit_gan", must_not_run)
    monkeypatch.setattr(cmp, "run_fit", must_not_run)
    main(["compare", "--config", _write_config(tmp_path, kwargs)])  # everything recorded: only the report
    assert (out / "README.md").read_text().split("## ")[1:] == readme.split("## ")[1:]


class StopAtEpoch(Callback):
    """Raises when epoch `epoch` starts (after the previous epoch's last.ckpt): a killed GAN fit."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("stopped by the test")


def test_resumed_gan_fit_selects_among_and_plots_every_epoch(tmp_path):
    """A GAN fit killed after epoch 0 goes on in a new version folder; the selection rule must still see epoch 0's
    checkpoint and metrics (before the fix it saw only the epochs after the kill)."""
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    every_epoch = tmp_path / "every_epoch.yaml"
    every_epoch.write_text("trainer:\n  callbacks+:\n    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
                           "init_args: {filename: '{epoch}', save_top_k: -1, every_n_epochs: 1, save_weights_only: true}}\n")
    args = ["--config", str(TEST_CONFIGS / "tiny_gan.yaml"), "--data.init_args.cohort_dir", str(cohort),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--config", str(every_epoch)]
    stop = tmp_path / "stop.yaml"
    stop.write_text("trainer:\n  callbacks+:\n    - {class_path: tests.test_compare.StopAtEpoch, init_args: {epoch: 1}}\n")
    out, rule = tmp_path / "cmp", "min:train/generator_loss"
    with pytest.raises(RuntimeError, match="stopped by the test"):
        cmp.fit_gan("WGAN-GP", "cpu_compare_wgan_gp.yaml", out, [*args, "--config", str(stop)], None, rule)
    gan = cmp.fit_gan("WGAN-GP", "cpu_compare_wgan_gp.yaml", out, args, None, rule)
    assert Path(gan["run_dir"]).name == "version_1"  # resumed: a new folder
    candidates = json.loads((Path(gan["run_dir"]) / "selection.json").read_text())["candidates"]
    assert [c["epoch"] for c in candidates] == [0, 1]
    with open(gan["metrics_csv"], newline="") as fh:
        assert {int(r["epoch"]) for r in csv.DictReader(fh)} == {0, 1}


def _write_config(tmp_path: Path, kwargs: dict) -> str:
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(kwargs))
    return str(path)


# --------------------------------------------------------------------------- 3D: Table 3 and Table A.1
GANS3D = ["GP", "SN"]


def _steps3d() -> dict:
    steps = {}
    for k, (training, gan) in enumerate(cmp.unet_rows(GANS3D)):
        splits = {}
        for split, shift in (("test", 0.0), ("external", -0.02)):
            res = {v: {"dsc_mean": 0.7 + 0.01 * k + shift + (0.05 if v == "intracranial" else 0), "dsc_std": 0.02,
                       "hd95_mean": 9.0, "hd95_std": 1.0, "bavd_mean": 0.5, "bavd_std": 0.1,
                       "bavd_vox_mean": 1.5 + k, "bavd_vox_std": 0.25, "n_patients": 3} for v in ("all", "intracranial")}
            splits[split] = {"results": res, "split": "test"}
        steps[f"unet/{training}-{gan}"] = {"training": training, "gan": gan, "epoch": 2, "val_dsc_patches": 0.6,
                                           "checkpoint": "x.ckpt", "summaries": splits}  # fmt: skip
    return steps


def test_table3_and_a1_place_dsc_and_voxel_bavd_per_cohort_and_vessel_set():
    from workflows.compare_report import table3

    rows = result_rows(_steps3d(), GANS3D)
    assert len(rows) == 5 * 2 * 2  # real, 2 augmented, 2 synthetic-only × test, external × all, intracranial
    table = table3(rows, GANS3D, "synthetic").splitlines()
    assert table[0] == ("| data source | PEGASUS-like DSC | PEGASUS-like bAVD (vox) | 1000Plus-like DSC | "
                        "1000Plus-like bAVD (vox) |")
    body = [line.split(" | ") for line in table[2:]]
    assert [b[0] for b in body] == ["| *A) All vessels*", "| GP model", "| SN model", "| Real",
                                    "| *B) Intracranial vessels*", "| GP model", "| SN model", "| Real"]
    # unet_rows order: real (k=0), real+synthetic GP (1), SN (2), synthetic GP (3), SN (4)
    assert body[1][1:] == ["0.730 ± 0.020", "4.500 ± 0.250", "0.710 ± 0.020", "4.500 ± 0.250 |"]
    assert body[7][1:] == ["0.750 ± 0.020", "1.500 ± 0.250", "0.730 ± 0.020", "1.500 ± 0.250 |"]  # real, intracranial
    augmented = table3(rows, GANS3D, "real+synthetic").splitlines()
    assert augmented[3].startswith("| Real + GP model | 0.710 ± 0.020 | 2.500 ± 0.250 | 0.690 ± 0.020 |")
    steps = _steps3d()
    for unet in steps.values():  # a summary without voxel bAVD shows the mm value, marked
        for split in unet["summaries"].values():
            for res in split["results"].values():
                del res["bavd_vox_mean"], res["bavd_vox_std"]
    assert "0.500 ± 0.100 mm" in table3(result_rows(steps, GANS3D), GANS3D, "synthetic")


def test_table3_says_when_all_vessels_equal_intracranial():
    from workflows.compare_report import report3d_lines

    rows = result_rows(_steps3d(), GANS3D)  # intracranial DSC differs from all-vessel DSC
    assert "A) equals B)" not in report3d_lines(rows, GANS3D, 1.0)[2]
    by_key = index_rows(rows)
    for r in rows:  # skull-stripped cohorts: the intracranial result is the all-vessel one
        r.update({k: v for k, v in by_key[(r["training"], r["gan"], r["evaluated_on"], "all")].items() if k != "vessels"})
    assert "A) equals B)" in report3d_lines(rows, GANS3D, 1.0)[2]


@pytest.mark.slow
def test_tiny_3d_comparison_end_to_end_and_resume(tmp_path, monkeypatch):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    external = write_tiny_cohort(tmp_path / "external", n_patients=6, seed=3, prefix="e")
    data = ["--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1"]
    seg = ["--config", str(TEST_CONFIGS / "tiny_seg3d.yaml"), *data, "--data.init_args.patch_size", "[32, 32, 8]",
           "--model.init_args.roi_size", "[32, 32, 8]"]  # the tiny 3D GANs' patch size
    kwargs = dict(out_dir=str(tmp_path / "cmp3d"), dims=3, n_synthetic=12, wandb=False,
                  gans={"SN": "cpu_compare3d_sn.yaml"},
                  gan_args=["--config", str(TEST_CONFIGS / "tiny_gan3d.yaml"), "--data.init_args.cohort_dir", str(cohort),
                            *data, "--trainer.log_every_n_steps", "1"],
                  unet_args=[*seg, "--data.init_args.cohort_dir", str(cohort)],
                  external_args=[*seg, "--data.init_args.cohort_dir", str(external)])  # fmt: skip
    out = main(["compare", "--config", _write_config(tmp_path, kwargs)])
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    # real, real + SN, SN only: each tested on the PEGASUS-like and the external test patients, 2 vessel sets
    assert {(r["training"], r["evaluated_on"]) for r in rows} == {
        (t, s) for t in ("real", "real+synthetic", "synthetic") for s in ("test", "external")}
    assert len(rows) == 3 * 2 * 2 and all("bavd_vox_mean" in r and float(r["n_patients"]) == 2 for r in rows)
    readme = (out / "README.md").read_text()
    assert "## Table 3" in readme and "| Real + SN model |" in readme and "| SN model |" in readme
    state = json.loads((out / "compare_state.json").read_text())
    assert state["settings"]["dims"] == 3 and state["settings"]["external"] == "cpu_compare3d_external.yaml"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(cmp, "fit_gan", must_not_run)
    monkeypatch.setattr(cmp, "run_fit", must_not_run)
    main(["compare", "--config", _write_config(tmp_path, kwargs)])
    assert (out / "README.md").read_text().split("## ")[1:] == readme.split("## ")[1:]
