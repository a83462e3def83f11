"""Transfer learning: strict loading of pre-trained U-Net weights, and a tiny end-to-end sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.image import imread

from cli import main
from lightning_modules.segmentation import SegmentationModule
from networks.unet2d import HalfUNet2D
from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort
from workflows.compose import experiment_args
from workflows.transfer import reference_metrics, transfer_sweep

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*")


def _net(features=(4, 8, 16), seed: int = 0) -> HalfUNet2D:
    torch.manual_seed(seed)
    return HalfUNet2D(features=features)


def _lightning_checkpoint(tmp_path: Path) -> Path:
    """A real Lightning checkpoint of a SegmentationModule built as `tofgan fit` builds it (LightningCLI)."""
    from lightning.pytorch.cli import LightningCLI

    torch.manual_seed(1)
    cli = LightningCLI(SegmentationModule, run=False, args={
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {"net": {"class_path": "networks.unet2d.HalfUNet2D", "init_args": {"features": [4, 8, 16]}},
                  "roi_size": [24, 24]}})  # fmt: skip
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "pre.ckpt")
    return tmp_path / "pre.ckpt"


def test_pretrained_weights_equal_after_loading(tmp_path):
    path = _lightning_checkpoint(tmp_path)
    saved = {k[4:]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items() if k.startswith("net.")}
    loaded = SegmentationModule(_net(seed=2), roi_size=(24, 24), pretrained=str(path))
    scratch = SegmentationModule(_net(seed=2), roi_size=(24, 24))
    assert saved.keys() == loaded.net.state_dict().keys()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.net.state_dict().items())
    assert not all(torch.equal(v, saved[k]) for k, v in scratch.net.state_dict().items())
    assert loaded.hparams["pretrained"] == str(path)


def test_plain_state_dict_is_accepted(tmp_path):
    net = _net(seed=3)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    loaded = SegmentationModule(_net(seed=4), pretrained=str(tmp_path / "net.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.parameters(), net.parameters()))


def test_mismatch_and_missing_files_name_the_file(tmp_path):
    path = _lightning_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="pre.ckpt.*do not fit"):
        SegmentationModule(_net(features=(4, 8, 32)), pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        SegmentationModule(_net(), pretrained=str(tmp_path / "nowhere.ckpt"))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        SegmentationModule(_net(), pretrained=str(tmp_path / "junk.ckpt"))
    python_built = SegmentationModule(_net(), roi_size=(24, 24))  # pickles its net into the hyper-parameters
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(python_built)
    trainer.save_checkpoint(tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="pickled.ckpt.*state_dict"):
        SegmentationModule(_net(), pretrained=str(tmp_path / "pickled.ckpt"))


def test_reference_metrics(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"results": {"all": {"dsc_mean": 0.9, "hd95_mean": 3.0}}}))
    assert reference_metrics(str(tmp_path / "s.json"))["dsc_mean"] == 0.9
    assert reference_metrics(None) is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        reference_metrics(str(tmp_path / "bad.json"))


class InitialWeights(Callback):
    """Saves the net's weights as the fit starts, beside the run's logs (used through the CLI below)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        torch.save(state, Path(trainer.log_dir) / "initial_net.pt")


@pytest.mark.slow
def test_tiny_sweep_starts_from_pretrained_or_scratch_and_writes_the_figure(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    tiny = ["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), "--data.init_args.cohort_dir", str(cohort),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1"]
    cli = main(["fit", *experiment_args("cpu_unet.yaml", {"logger": "logger/csv.yaml"}), *tiny,
                "--trainer.logger.init_args.save_dir", str(tmp_path / "pre"), "--seed_everything", "7"])
    pretrained = Path(cli.trainer.checkpoint_callback.last_model_path)
    pre = {k[4:]: v for k, v in torch.load(pretrained, weights_only=True)["state_dict"].items() if k.startswith("net.")}
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"results": {"all": {"dsc_mean": 0.42, "dsc_std": 0.01, "hd95_mean": 5.0,
                                                   "hd95_std": 1.0}}}))
    out = transfer_sweep(str(tmp_path / "sweep"), str(pretrained), n_train=[1, 2],
                         experiment="cpu_transfer_1000plus.yaml", reference_summary=str(ref),
                         extra_args=[*tiny, "--trainer.callbacks+=tests.test_transfer.InitialWeights"], wandb=False)
    for n in (1, 2):
        for init in ("scratch", "pretrained"):
            (first,) = (out / "runs" / f"n{n:02d}-{init}").glob("version_*/initial_net.pt")
            start = torch.load(first, weights_only=True)
            same = all(torch.equal(v, pre[k]) for k, v in start.items())
            assert same == (init == "pretrained"), (n, init)
            errors = list((out / "runs" / f"n{n:02d}-{init}" / "test" / "error_maps").glob("*.png"))
            assert len(errors) == 2  # the two test patients
    with open(out / "transfer.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["n_train"], r["init"]) for r in rows] == [("1", "scratch"), ("1", "pretrained"), ("2", "scratch"),
                                                         ("2", "pretrained")]
    assert all(0.0 <= float(r["dsc_mean"]) <= 1.0 and r["n_patients"] in ("2", "2.0") for r in rows)
    png = imread(out / "transfer.png")
    assert png.shape[0] > 200 and png.shape[1] > 400
    readme = (out / "README.md").read_text()
    assert "0.420" in readme and "transfer.png" in readme
