"""SegmentationModule + NiftiPredictionWriter on tiny nets, patches and volumes (CPU)."""

from __future__ import annotations

import csv
import functools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from callbacks.prediction_writer import NiftiPredictionWriter
from lightning_modules.input_norm import zscore, zscore_foreground
from lightning_modules.segmentation import SegmentationModule
from metrics.segmentation import segmentation_metrics
from networks.unet2d import HalfUNet2D

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*", "ignore:.*sync_dist.*")
SPACING = (0.5, 0.7, 1.3)


def _module(**kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    kw = {"roi_size": (32, 32), "sw_batch_size": 4, "optimizer": functools.partial(torch.optim.Adam, lr=3e-3)}
    kw.update(kwargs)
    return SegmentationModule(HalfUNet2D(features=(4, 8, 16)), **kw)


def _patches(n: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.avg_pool2d(torch.randn(n, 1, 40, 40, generator=g), 9, stride=1)[..., :32, :32]
    label = (blobs > 0.1).float()  # ~16 % foreground in smooth blobs, like vessel cross-sections
    image = 100 + 40 * label + 5 * torch.randn(n, 1, 32, 32, generator=g)  # raw intensities: z-score needed
    return [{"image": image[i], "label": label[i]} for i in range(n)]


def _trainer(tmp_path, **kwargs) -> Trainer:
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path)
    kw.update(kwargs)
    return Trainer(**kw)


def test_loss_is_one_minus_paper_dice():
    m = _module()
    logits = torch.randn(3, 1, 8, 8)
    y = (torch.rand(3, 1, 8, 8) < 0.3).float()
    p = torch.sigmoid(logits)
    paper_dice = (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)  # Keras dice_coef, smooth 1, whole batch
    assert m.loss_fn(logits, y).item() == pytest.approx(1 - paper_dice.item(), rel=1e-6)


def test_training_reduces_loss(tmp_path):
    seed_everything(0)
    m = _module()
    data = _patches()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    with torch.no_grad():
        before = m.loss_fn(m(batch["image"]), batch["label"]).item()
    w0 = m.net.head.conv.weight.detach().clone()
    _trainer(tmp_path, max_steps=40).fit(m, DataLoader(data, batch_size=8))
    m.eval()
    with torch.no_grad():
        after = m.loss_fn(m(batch["image"]), batch["label"]).item()
    assert math.isfinite(after) and after < before - 0.05
    assert not torch.equal(w0, m.net.head.conv.weight)


def test_fast_dev_run_fit_validate(tmp_path):
    m = _module()
    trainer = _trainer(tmp_path, fast_dev_run=True)
    trainer.fit(m, DataLoader(_patches(), batch_size=4), DataLoader(_patches(seed=1), batch_size=4))
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/dsc", "val/loss", "val/dsc"):
        assert key in logged and torch.isfinite(logged[key]), key


def test_scheduler_steps_once_per_epoch(tmp_path):
    """An injected schedule (cpu_demo3d_unet.yaml: cosine over the epochs) sets each epoch's learning rate."""
    sched = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4)
    m = _module(scheduler=sched)
    rates: list[float] = []

    class Record(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(tmp_path, max_epochs=3, callbacks=[Record()]).fit(m, DataLoader(_patches(), batch_size=4))
    expected = [3e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(3)]
    assert rates == pytest.approx(expected, rel=1e-9) and rates[2] < rates[0]


def _volume(seed: int, pid: str, shape=(32, 32, 5), brain: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(1, *shape, generator=g) < 0.15).float()
    image = 50 + 30 * label + 8 * torch.randn(1, *shape, generator=g)
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-10.0, 5.0, 2.5 * seed], dtype=torch.float64)
    out = {"image": image, "label": label, "patient_id": pid, "affine": affine,
           "spacing": torch.tensor(SPACING, dtype=torch.float64), "image_path": f"/{pid}/image.nii.gz"}
    if brain:
        bm = torch.zeros(1, *shape)
        bm[:, 4:28, 6:30, :] = 1
        out["brain_mask"] = bm
    return out


@pytest.mark.parametrize("slice_batch", [64, 2])
def test_sliding_window_equals_direct_forward_when_one_window(slice_batch):
    m = _module(slice_batch=slice_batch).eval()
    vol = _volume(0, "a")["image"][None]  # (1, 1, 32, 32, 5), one 32×32 window per slice
    probs = m.predict_volume(vol)
    slices = vol[0].permute(3, 0, 1, 2)
    with torch.no_grad():
        direct = torch.sigmoid(m.net(zscore(slices))).permute(1, 2, 3, 0)[None]
    assert probs.shape == vol.shape
    torch.testing.assert_close(probs, direct, rtol=1e-5, atol=1e-6)


def test_sliding_window_3d_net():
    torch.manual_seed(0)
    m = SegmentationModule(HalfUNet2D(features=(2, 4), spatial_dims=3), roi_size=(16, 16, 8)).eval()
    vol = torch.randn(1, 1, 16, 16, 8) * 3 + 7
    with torch.no_grad():
        direct = torch.sigmoid(m.net(zscore(vol)))
    torch.testing.assert_close(m.predict_volume(vol), direct, rtol=1e-5, atol=1e-6)
    bigger = m.predict_volume(torch.randn(2, 1, 24, 20, 12))  # several overlapping windows, padded edges
    assert bigger.shape == (2, 1, 24, 20, 12) and ((bigger >= 0) & (bigger <= 1)).all()


@pytest.mark.parametrize("background", [0.0, -1.0])  # skull-stripped raw data / a GAN's [-1, 1] output
@pytest.mark.parametrize("dims", [2, 3])
def test_zscore_foreground_takes_statistics_from_the_tissue_only(background, dims):
    """At a stripped brain's edge half the window is background: the tissue must come out as it would alone (mean 0,
    SD 1, recomputed in float64 with numpy), not lifted towards vessel-like values as the plain z-score lifts it."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 16, 16) if dims == 2 else (2, 1, 16, 16, 8)
    x = 0.3 + 0.05 * torch.randn(shape, generator=g).abs()
    x[:, :, :7] = background
    z = zscore_foreground(x)
    for b in range(2):
        tissue = x[b, :, 7:].double().numpy()
        ref = (x[b].double().numpy() - tissue.mean()) / tissue.std()
        np.testing.assert_allclose(z[b].double().numpy(), ref, rtol=1e-4, atol=1e-4)
    assert z[:, :, 7:].mean().abs() < 1e-4 and zscore(x)[:, :, 7:].mean() > 0.8  # the plain z-score lifts tissue
    assert torch.equal(zscore_foreground(torch.full(shape, 3.0)), torch.zeros(shape))  # constant: no inf or NaN


def test_zscore_foreground_is_the_modules_input_norm_in_sliding_windows():
    torch.manual_seed(0)
    m = SegmentationModule(HalfUNet2D(features=(2, 4), spatial_dims=3), roi_size=(16, 16, 8),
                           input_norm="zscore_foreground").eval()
    vol = torch.rand(1, 1, 16, 16, 8) * 3 + 7
    vol[..., :5, :, :] = 0
    with torch.no_grad():
        direct = torch.sigmoid(m.net(zscore_foreground(vol)))
    torch.testing.assert_close(m.predict_volume(vol), direct, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(direct, torch.sigmoid(m.net(zscore(vol))), atol=1e-3)


def test_test_step_metrics_reports_and_writer(tmp_path):
    m = _module(report_dir=str(tmp_path / "report"), threshold=0.5)
    vols = [_volume(1, "pat-b"), _volume(2, "pat-a")]
    writer = NiftiPredictionWriter(str(tmp_path / "pred"))
    trainer = _trainer(tmp_path, callbacks=[writer])
    logged = trainer.test(m, DataLoader(vols, batch_size=1), verbose=False)[0]

    rows, rows_ic = [], []
    for v in vols:
        prob = m.predict_volume(v["image"][None])[0, 0].numpy()
        pred, lab, bm = prob >= 0.5, v["label"][0].numpy() > 0.5, v["brain_mask"][0].numpy() > 0.5
        rows.append(segmentation_metrics(pred, lab, SPACING))
        rows_ic.append(segmentation_metrics(pred & bm, lab & bm, SPACING))
        img_p = nib.load(tmp_path / "pred" / f"{v['patient_id']}_prob.nii.gz")
        img_b = nib.load(tmp_path / "pred" / f"{v['patient_id']}_pred.nii.gz")
        np.testing.assert_allclose(img_p.affine, v["affine"].numpy())
        np.testing.assert_allclose(img_b.affine, v["affine"].numpy())
        assert img_p.shape == img_b.shape == (32, 32, 5)
        assert img_p.get_data_dtype() == np.float32 and img_b.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img_p.get_fdata(), prob, atol=1e-6)
        np.testing.assert_array_equal(np.asanyarray(img_b.dataobj), pred.astype(np.uint8))

    for prefix, rs in (("test", rows), ("test/intracranial", rows_ic)):
        for name in ("dsc", "hd95", "bavd"):
            v = np.array([r[name] for r in rs])
            assert logged[f"{prefix}/{name}"] == pytest.approx(v.mean(), rel=1e-5)
            assert logged[f"{prefix}/{name}_mean"] == pytest.approx(v.mean(), rel=1e-5)
            assert logged[f"{prefix}/{name}_std"] == pytest.approx(v.std(ddof=1), rel=1e-4)

    with open(tmp_path / "report" / "test_per_patient.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in table] == ["pat-a", "pat-b"]  # sorted
    assert float(table[1]["dsc"]) == pytest.approx(rows[0]["dsc"])
    assert float(table[0]["intracranial_bavd"]) == pytest.approx(rows_ic[1]["bavd"])
    summary = json.loads((tmp_path / "report" / "test_summary.json").read_text())
    assert summary["results"]["all"]["n_patients"] == 2
    assert summary["results"]["intracranial"]["hd95_mean"] == pytest.approx(np.mean([r["hd95"] for r in rows_ic]))


def test_no_brain_mask_no_intracranial_and_predict(tmp_path):
    m = _module()
    vols = [_volume(3, "x", brain=False)]
    trainer = _trainer(tmp_path)
    logged = trainer.test(m, DataLoader(vols, batch_size=1), verbose=False)[0]
    assert "test/dsc" in logged and not any("intracranial" in k for k in logged)
    assert (tmp_path / "test_per_patient.csv").exists()  # default: the trainer's log dir
    out = trainer.predict(m, DataLoader(vols, batch_size=1))[0]
    assert out["prob"].shape == (1, 1, 32, 32, 5) and out["patient_id"] == ["x"]
    assert out["affine"].shape == (1, 4, 4) and out["pred"].dtype == torch.uint8


def test_writer_from_predict(tmp_path):
    m = _module()
    writer = NiftiPredictionWriter(str(tmp_path / "out"), write_prob=False)
    _trainer(tmp_path, callbacks=[writer]).predict(m, DataLoader([_volume(4, "y")], batch_size=1),
                                                   return_predictions=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["y_pred.nii.gz"]


def test_invalid_roi_size():
    with pytest.raises(ValueError, match="roi_size"):
        _module(roi_size=(32,))


def test_lightning_cli_injection_and_checkpoint_roundtrip(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(SegmentationModule, run=False, args={
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "max_steps": 1,
                    "default_root_dir": str(tmp_path)},
        "model": {"net": {"class_path": "networks.unet2d.HalfUNet2D", "init_args": {"features": [4, 8, 16]}},
                  "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 8e-5}},
                  "roi_size": [32, 32], "sw_mode": "constant"}})
    assert cli.model.configure_optimizers().param_groups[0]["lr"] == 8e-5
    cli.trainer.fit(cli.model, DataLoader(_patches(), batch_size=4))
    cli.trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SegmentationModule.load_from_checkpoint(tmp_path / "m.ckpt")  # net rebuilt from the saved config
    assert loaded.net.features == (4, 8, 16) and loaded.roi_size == (32, 32)
    for a, b in zip(loaded.net.parameters(), cli.model.net.parameters()):
        assert torch.equal(a, b)
