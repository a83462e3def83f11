"""GAN evaluation: reservoir sampling, domain extractor, the callback in real fits, `tofgan test` report, selection."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from scipy import linalg
from torch.utils.data import DataLoader

from callbacks.gan_evaluation import GANEvaluationCallback, PatchReservoir
from callbacks.run_manifest import run_dir
from cli import main
from datamodules.gan_data import GANPatchDataModule
from lightning_modules.wgan import WGANGP
from networks.gan2d import Generator2D, WGANCritic2D
from networks.unet2d import HalfUNet2D
from tests.cli_helpers import CONFIGS, CPU, TEST_CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort
from workflows.domain_extractor import domain_extractor
from workflows.select_checkpoint import select_checkpoint

SIZE, LATENT, FEATURES = 24, 8, [4, 8, 16]
SCALARS = ("fid", "prd_auc", "prd_f8", "prd_f1_8", "ssim_synthetic", "ssim_real", "label_w1_vessel_fraction", "eval_seconds")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("eval_cohort"), n_patients=6)


@pytest.fixture(scope="module")
def extractor_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SegmentationModule-like checkpoint as LightningCLI writes it: net spec in hparams, weights under net."""
    torch.manual_seed(0)
    net = HalfUNet2D(features=FEATURES)
    path = tmp_path_factory.mktemp("extractor") / "seg.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": {"class_path": "networks.unet2d.HalfUNet2D",
                                             "init_args": {"features": FEATURES}}}}, path)
    return path


def _datamodule(cohort: Path, tmp_path: Path) -> GANPatchDataModule:
    return GANPatchDataModule(cohort_dir=str(cohort), n_train=3, n_val=1, n_test=2, cache_dir=str(tmp_path / "cache"),
                              batch_size=8, patch_size=[SIZE, SIZE], n_vessel=12, n_random=12)


def _wgan() -> WGANGP:
    torch.manual_seed(0)
    return WGANGP(Generator2D(LATENT, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE), latent_dim=LATENT,
                  n_critic=2, n_sample_grid=4)


def _callback(**kw) -> GANEvaluationCallback:
    args = dict(n_samples=48, max_real=64, prd_num_clusters=4, ssim_pairs=32, val_embedding_max_per_set=20,
                embedding="pca", batch_size=16)
    return GANEvaluationCallback(**{**args, **kw})


class ImageCSVLogger(CSVLogger):
    """CSV logger with W&B's `log_image(key, images, step)` signature, recording the calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[tuple[str, list[str], int | None]] = []

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.images.append((key, images, step))


def _frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID with scipy's sqrtm (independent of metrics.fid's Cholesky/eigenvalue route)."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU channels make Σ singular; sqrtm stays accurate enough here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# --------------------------------------------------------------------------- pieces
def test_reservoir_is_a_seeded_uniform_subset() -> None:
    stream = torch.arange(200, dtype=torch.float32).view(-1, 1, 1, 1)
    counts = np.zeros(200)
    for seed in range(300):
        res = PatchReservoir(20, seed)
        for start in range(0, 200, 7):  # uneven batches
            res.add(stream[start : start + 7], torch.ones(len(stream[start : start + 7]), 1, 1, 1))
        images, labels = res.tensors()
        picked = images.flatten().long().numpy()
        assert len(set(picked)) == 20 and labels.dtype == torch.uint8
        counts[picked] += 1
    # each item is kept with probability 20/200 = 0.1: first and last quarter alike (not "the first N")
    assert counts[:50].mean() / 300 == pytest.approx(0.1, abs=0.02)
    assert counts[150:].mean() / 300 == pytest.approx(0.1, abs=0.02)
    a, b = PatchReservoir(5, 3), PatchReservoir(5, 3)
    for r in (a, b):
        r.add(stream, torch.zeros(200, 1, 1, 1))
    assert torch.equal(a.tensors()[0], b.tensors()[0])


def test_domain_extractor_rebuilds_the_net_from_hparams(extractor_ckpt: Path, tmp_path: Path) -> None:
    ext = domain_extractor(str(extractor_ckpt))
    assert ext.layer_name == "encoders.2" and ext.num_features == 16
    assert ext.weights_sha256 == hashlib.sha256(extractor_ckpt.read_bytes()).hexdigest()
    net = HalfUNet2D(features=FEATURES)
    state = torch.load(extractor_ckpt, weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    net.eval()
    x = torch.randn(5, 2, SIZE, SIZE)
    h = x[:, :1]
    h = (h - h.mean((1, 2, 3), keepdim=True)) / (h.std((1, 2, 3), keepdim=True) + 1e-6)
    with torch.no_grad():  # encoder by hand: block, pool, block, pool, block
        h = net.encoders[2](net.pool(net.encoders[1](net.pool(net.encoders[0](h)))))
        torch.testing.assert_close(ext(x), h.mean((2, 3)))
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, bad)
    with pytest.raises(ValueError, match="bad.ckpt.*no 'net'"):
        domain_extractor(str(bad))


# --------------------------------------------------------------------------- callback in a real fit
def test_callback_in_fit_logs_finite_scores_and_leaves_the_gan_alone(cohort: Path, extractor_ckpt: Path,
                                                                      tmp_path: Path) -> None:
    dm, model, cb = _datamodule(cohort, tmp_path), _wgan(), _callback(extractor_checkpoint=str(extractor_ckpt))
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/fid", mode="min", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, logger=ImageCSVLogger(tmp_path, name="run"),
                        callbacks=[cb, ckpt_cb], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    logged = trainer.callback_metrics
    for key in SCALARS:
        assert torch.isfinite(logged[f"val/{key}"]), key
    assert 0 <= logged["val/prd_auc"] <= 1 and logged["val/fid"] > 0
    assert np.isfinite(ckpt_cb.best_model_score.item())
    # every evaluated epoch is in metrics.csv (the file select_checkpoint reads)
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/fid")) == [0, 1]
    # independent FID: real = all val patches (fewer than max_real), synthetic regenerated from sample_seed
    ext = domain_extractor(str(extractor_ckpt))
    real = torch.cat([b["image"] for b in dm.val_dataloader()])
    syn, _ = model.generate(48, seed=cb.sample_seed)
    with torch.no_grad():
        expected = _frechet_sqrtm(ext(real).double().numpy(), ext(syn).double().numpy())
    assert logged["val/fid"].item() == pytest.approx(expected, rel=1e-3)
    evaluation = run_dir(trainer) / "evaluation"  # beside the checkpoints folder
    record = json.loads((evaluation / "val_metrics.jsonl").read_text().splitlines()[-1])
    assert record["fid"]["weights_sha256"] == ext.weights_sha256 and record["fid"]["n_real"] == len(real) == 24
    assert (evaluation / "epoch_0001_prd.png").is_file() and (evaluation / "epoch_0001_embedding.png").is_file()
    assert {(key, step) for key, _, step in trainer.logger.images} == {
        (k, s) for k in ("val/prd", "val/embedding") for s in (3, 6)}  # per epoch 2 critic + 1 generator steps
    assert all(Path(p).is_file() for _, paths, _ in trainer.logger.images for p in paths)
    # the extractor stays out of the GAN checkpoint
    saved = torch.load(ckpt_cb.best_model_path, weights_only=True)
    assert all(k.startswith(("generator.", "critic.", "grid_noise")) for k in saved["state_dict"])
    assert all(not state for key, state in saved["callbacks"].items() if "GANEvaluationCallback" in key)
    # a further evaluation changes nothing in the GAN and, same weights and seed, repeats the score
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = dict(model.step_counts)
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.step_counts == counts
    assert again["val/fid"] == pytest.approx(logged["val/fid"].item(), rel=1e-6)


def test_without_extractor_fid_is_skipped_with_one_warning(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.rand(1, SIZE, SIZE, generator=g) * 2 - 1,
             "label": (torch.rand(1, SIZE, SIZE, generator=g) > 0.9).float()} for _ in range(16)]
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        callbacks=[_callback()], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no feature extractor") as record:
        trainer.fit(_wgan(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    assert sum("no feature extractor" in str(w.message) for w in record) == 1
    logged = trainer.callback_metrics
    assert "val/fid" not in logged and "val/prd_auc" not in logged
    assert 0 < logged["val/ssim_real"] <= 1 and torch.isfinite(logged["val/ssim_synthetic"])


# --------------------------------------------------------------------------- through the CLI
def _fragment(tmp_path: Path, extractor_ckpt: Path) -> Path:
    """The shipped fragment with a test extractor and tiny sizes (its keys are exercised as shipped)."""
    cfg = yaml.safe_load((CONFIGS / "callbacks" / "gan_evaluation.yaml").read_text())
    args = cfg["trainer"]["callbacks+"][0]["init_args"]
    args.update(extractor_checkpoint=str(extractor_ckpt), every_n_epochs=1, n_samples=16, max_real=16,
                test_n_samples=24, test_max_real=64, prd_num_clusters=4, prd_num_runs=2, prd_n_init=2,
                ssim_pairs=16, val_embedding_max_per_set=16, test_embedding_max_per_set=20)
    cfg["trainer"]["callbacks+"].append({  # per-epoch snapshots (trainer/cpu.yaml keeps every 5th epoch only)
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"filename": "{epoch}", "monitor": "val/fid", "mode": "min", "save_top_k": -1,
                      "save_weights_only": True}})
    path = tmp_path / "gan_evaluation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_fit_select_by_fid_and_test_report(cohort: Path, extractor_ckpt: Path, tmp_path: Path) -> None:
    experiment = CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml"
    args = [*cpu_args(experiment, cohort, tmp_path), "--config", str(_fragment(tmp_path, extractor_ckpt))]
    cli = main(["fit", *args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"])
    run = Path(cli.trainer.log_dir)
    fids = {int(r["epoch"]): float(r["val/fid"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/fid")}
    assert sorted(fids) == [0, 1] and all(np.isfinite(list(fids.values())))
    chosen = select_checkpoint(str(run), "min:val/fid")
    assert chosen.name == f"epoch={min(fids, key=fids.get)}.ckpt"

    test = main(["test", *args, "--ckpt_path", str(chosen)])
    assert torch.isfinite(test.trainer.callback_metrics["test/fid"])
    out = Path(test.trainer.log_dir) / "gan_evaluation"
    report = json.loads((out / "gan_evaluation.json").read_text())
    for section in ("fid", "prd", "diversity", "label_realism", "memorisation", "meta", "seconds", "figures"):
        assert section in report, section
    assert report["meta"]["checkpoint_sha256"] == hashlib.sha256(chosen.read_bytes()).hexdigest()
    assert report["fid"]["weights_sha256"] == hashlib.sha256(extractor_ckpt.read_bytes()).hexdigest()
    # tiny_gan.yaml: 4 + 4 patches per patient; 3 train and 2 test patients, all below test_max_real
    assert report["fid"]["n_real"] == 24 and report["meta"]["n_real_heldout"] == 16 and report["fid"]["n_fake"] == 24
    mem = report["memorisation"]
    assert mem["fid_ratio"] == pytest.approx(mem["fid_train"] / mem["fid_heldout"])
    assert mem["fid_train"] == pytest.approx(report["fid"]["fid"], rel=1e-4)  # same sets, two code paths
    assert set(report["figures"]) == {"prd", "label_realism", "embedding"}
    assert all((out / f).is_file() for f in report["figures"].values())
    md = (out / "gan_evaluation.md").read_text()
    for heading in ("## FID", "## PRD", "## Diversity", "## Label realism", "## Memorisation", "## Cost"):
        assert heading in md


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_two_ranks_log_the_same_scores_without_deadlock(cohort: Path, extractor_ckpt: Path, tmp_path: Path) -> None:
    """Two gloo ranks through the console script (Lightning re-launches it): rank 0 computes, both log."""
    from tests.test_ddp import run_tofgan

    ddp = ["--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    # The experiment without its SampleGridCallback: that callback reads trainer.log_dir (a DDP collective) on
    # rank 0 only and hangs two-rank runs by itself; this test is about the evaluation callback.
    experiment = yaml.safe_load((CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml").read_text())
    experiment["trainer"].pop("callbacks+")
    copy = tmp_path / "cpu_wgan_gp_sn.yaml"
    copy.write_text((CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml").read_text().splitlines()[0] + "\n"
                    + yaml.safe_dump(experiment))
    args = [*cpu_args(copy, cohort, tmp_path),
            "--config", str(_fragment(tmp_path, extractor_ckpt)), *ddp, "--data.init_args.batch_size", "8"]
    run_tofgan(["fit", *args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"], tmp_path)
    metrics = next(tmp_path.rglob("metrics.csv"))
    fids = [float(r["val/fid"]) for r in csv.DictReader(open(metrics)) if r.get("val/fid")]
    assert len(fids) == 2 and all(np.isfinite(fids))
    assert len(list(tmp_path.rglob("epoch=*.ckpt"))) == 2, "ModelCheckpoint(monitor='val/fid') under DDP"
    best = select_checkpoint(str(metrics.parent), "min:val/fid")
    run_tofgan(["test", *args, "--ckpt_path", str(best)], tmp_path)
    report = json.loads(next(tmp_path.rglob("gan_evaluation.json")).read_text())
    # under DDP the real patches of both ranks are gathered: every train / held-out patch reaches rank 0
    assert report["fid"]["n_real"] == 24 and report["meta"]["n_real_heldout"] == 16


def test_train_domain_extractor_publishes_a_versioned_file(cohort: Path, tmp_path: Path) -> None:
    from workflows.domain_extractor import train_domain_extractor

    path = train_domain_extractor(
        str(tmp_path / "extractors"), "cpu_unet.yaml", max_epochs=2, replace=CPU,
        extra_args=["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), "--data.init_args.cohort_dir", str(cohort),
                    "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.limit_train_batches", "2"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"domain_extractor-{digest[:12]}.ckpt"
    card = json.loads(path.with_suffix(".json").read_text())
    dsc = [float(r["val/dsc"]) for r in csv.DictReader(open(Path(card["run_dir"]) / "metrics.csv")) if r.get("val/dsc")]
    assert card["sha256"] == digest and card["best_score"] == pytest.approx(max(dsc))
    ext = domain_extractor(str(path))  # tiny_seg.yaml: features [4, 8, 16]
    assert ext.weights_sha256 == digest and ext(torch.randn(3, 1, SIZE, SIZE)).shape == (3, 16)
