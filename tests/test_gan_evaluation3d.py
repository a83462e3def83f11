"""GAN evaluation on 3D (B, 2, H, W, D) batches: MedicalNet FID / PRD / label realism in a fit, checked against
independent computations, and the `tofgan test` report of a 3D paper config with the shipped 3D fragment."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from monai.networks.nets import resnet10
from scipy import linalg, ndimage
from scipy.stats import wasserstein_distance
from torch.utils.data import DataLoader

from callbacks.gan_evaluation import GANEvaluationCallback
from callbacks.run_manifest import run_dir
from cli import main
from lightning_modules.wgan import WGANGP
from networks.feature_extractors import MedicalNetFeatures
from networks.gan3d import Generator3D, WGANCritic3D
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort

pytestmark = pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module`.*", "ignore:.*val_dataloader.*")
SIZE3, LATENT = (32, 32, 16), 8


@pytest.fixture(scope="module")
def medicalnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ResNet-10 weights in Tencent's released format (the tests never need the real file)."""
    torch.manual_seed(0)
    net = resnet10(spatial_dims=3, n_input_channels=1, shortcut_type="B", bias_downsample=False, conv1_t_stride=2,
                   feed_forward=False)
    path = tmp_path_factory.mktemp("medicalnet") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def tubes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 3D blob-vessel labels and images bright on them, images in [-1, 1] (as GAN patches)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, *(s + 6 for s in SIZE3), generator=g)
    label = torch.nn.functional.avg_pool3d(noise, 7, stride=1) > 0.12
    image = (label.float() * 1.4 - 0.7 + 0.1 * torch.randn(n, 1, *SIZE3, generator=g)).clamp(-1, 1)
    return image, label.float()


def tiny_wgan3d() -> WGANGP:
    torch.manual_seed(0)
    return WGANGP(Generator3D(LATENT, 16, out_size=SIZE3), WGANCritic3D(ndf=16, in_size=SIZE3, norm="spectral"),
                  latent_dim=LATENT, n_critic=1, n_sample_grid=4)


def frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID with scipy's sqrtm (independent of metrics.fid's Cholesky/eigenvalue route)."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def components_26(labels: torch.Tensor) -> np.ndarray:
    """Connected components per patch (26-connectivity) counted with scipy directly."""
    structure = np.ones((3, 3, 3), bool)
    return np.array([ndimage.label(lab[0].numpy() > 0.5, structure=structure)[1] for lab in labels], float)


def test_callback_scores_5d_batches_as_independent_computations(medicalnet_weights: Path, tmp_path: Path) -> None:
    image, label = tubes(24, seed=1)
    data = [{"image": image[i], "label": label[i]} for i in range(24)]
    extractor = MedicalNetFeatures(str(medicalnet_weights), normalisation="medicalnet_nonzero")
    cb = GANEvaluationCallback(extractor=extractor, n_samples=16, max_real=24, prd_num_clusters=10, ssim_pairs=8,
                               embedding="pca", val_embedding_max_per_set=16, batch_size=8,
                               label_spacing=[0.5, 0.5, 0.7])
    model = tiny_wgan3d()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        callbacks=[cb], enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    logged = trainer.callback_metrics
    syn, syn_label = model.generate(16, seed=cb.sample_seed)
    assert syn.shape == (16, 1, *SIZE3)
    with torch.no_grad():
        f_real, f_syn = extractor(image).double().numpy(), extractor(syn).double().numpy()
    assert logged["val/fid"].item() == pytest.approx(frechet_sqrtm(f_real, f_syn), rel=1e-3)
    # label realism: components per patch with 26-connectivity, Wasserstein-1 between the two sets
    expected_w1 = wasserstein_distance(components_26(syn_label.float()), components_26(label))
    assert logged["val/label_w1_n_components"].item() == pytest.approx(expected_w1, rel=1e-6, abs=1e-9)
    record = json.loads((run_dir(trainer) / "evaluation" / "val_metrics.jsonl").read_text().splitlines()[-1])
    assert record["prd"]["n_eval"] == record["prd"]["n_ref"] == 16 and record["prd"]["num_clusters"] == 10
    assert 0 <= logged["val/prd_auc"].item() <= 1 and record["fid"]["extractor"] == "medicalnet_resnet10"
    assert "voxels > 0" in record["fid"]["input_mapping"] and record["fid"]["n_real"] == 24
    assert 0 < logged["val/ssim_real"].item() <= 1


@pytest.mark.slow
def test_tofgan_test_report_of_a_3d_paper_config(medicalnet_weights: Path, tmp_path: Path) -> None:
    """cpu_subramaniam2022_sn.yaml + configs/callbacks/gan_evaluation3d.yaml (tiny sizes): fit, then the report."""
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    cfg = yaml.safe_load((CONFIGS / "callbacks" / "gan_evaluation3d.yaml").read_text())
    args = cfg["trainer"]["callbacks+"][0]["init_args"]
    args["extractor"]["init_args"]["weights_path"] = str(medicalnet_weights)
    args.update(every_n_epochs=1, n_samples=8, max_real=8, test_n_samples=12, test_max_real=64, prd_num_runs=2,
                prd_n_init=2, ssim_pairs=8, test_embedding_max_per_set=12)
    fragment = tmp_path / "gan_evaluation3d.yaml"
    fragment.write_text(yaml.safe_dump(cfg))
    experiment = CONFIGS / "experiment" / "cpu_subramaniam2022_sn.yaml"
    common = [*cpu_args(experiment, cohort, tmp_path), "--config", str(fragment)]
    fit = main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    assert torch.isfinite(fit.trainer.callback_metrics["val/fid"])
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    test = main(["test", *common, "--ckpt_path", str(ckpt)])
    report = json.loads((Path(test.trainer.log_dir) / "gan_evaluation" / "gan_evaluation.json").read_text())
    # tiny_gan3d.yaml: 2×2×2 grid + 4 vessel-centred = 12 patches per patient; 3 train, 2 held-out patients
    assert report["fid"]["n_real"] == 36 and report["meta"]["n_real_heldout"] == 24 and report["fid"]["n_fake"] == 12
    assert report["prd"]["num_clusters"] == 10 and report["prd"]["n_eval"] == report["prd"]["n_ref"] == 12
    assert report["fid"]["extractor"] == "medicalnet_resnet10" and np.isfinite(report["fid"]["fid"])
    assert report["label_realism"]["summary"]["synthetic"]["n_patches"] == 12
    assert report["label_realism"]["spacing_mm"] is not None and len(report["label_realism"]["spacing_mm"]) == 3


def test_domain_extractor_of_a_3d_unet_checkpoint(tmp_path: Path) -> None:
    """The no-download extractor in 3D: a 3D U-Net checkpoint as `tofgan fit` writes it (net spec in the
    hyper-parameters) gives the global average of its deepest encoder block on z-scored 5D input."""
    from networks.unet import UNet
    from workflows.domain_extractor import domain_extractor

    spec = {"spatial_dims": 3, "features": [4, 8, 16], "norm": "batch", "input_norm": True, "bottleneck_fc": 2}
    torch.manual_seed(0)
    net = UNet(**spec).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so eval-mode use is visible
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "unet3d.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": {"class_path": "networks.unet.UNet", "init_args": spec}}}, ckpt)
    ext = domain_extractor(str(ckpt))
    x = torch.randn(3, 2, *SIZE3)
    z = x[:, :1]
    z = (z - z.mean((1, 2, 3, 4), keepdim=True)) / (z.std((1, 2, 3, 4), keepdim=True) + 1e-6)
    seen: list[torch.Tensor] = []
    net.get_submodule(ext.layer_name).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(z)
        torch.testing.assert_close(ext(x), seen[0].mean((2, 3, 4)))
    assert ext.num_features == 16 and ext(x).shape == (3, 16)
