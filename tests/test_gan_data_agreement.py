"""GANModule.on_fit_start: the data's patch size must be what the generator makes and the critic takes; a
mismatch is named with both settings before the first step (instead of a torch.cat error inside it)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cli import main
from datamodules.patches import PatchSettings
from lightning_modules.wgan import WGANGP
from networks.gan2d import Generator2D, WGANCritic2D
from tests.cli_helpers import CONFIGS, cpu_args
from tests.fixtures_cohort import write_tiny_cohort


class PatchData(L.LightningDataModule):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.patch_settings = PatchSettings((size, size), 2, 2)
        self.size = size

    def train_dataloader(self) -> DataLoader:
        data = [{"image": torch.rand(1, self.size, self.size) * 2 - 1, "label": torch.zeros(1, self.size, self.size)}
                for _ in range(4)]
        return DataLoader(data, batch_size=2)


class CountingWGAN(WGANGP):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingWGAN.steps += 1
        return super().training_step(batch, batch_idx)


def _fit(g_size: int, c_size: int, data_size: int) -> CountingWGAN:
    CountingWGAN.steps = 0
    torch.manual_seed(0)
    model = CountingWGAN(Generator2D(8, 4, out_size=g_size), WGANCritic2D(ndf=4, in_size=c_size), latent_dim=8,
                         n_critic=1, n_sample_grid=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=PatchData(data_size))
    return model


@pytest.mark.parametrize(("sizes", "match"), [
    ((12, 24, 24), r"PatchData patch_size \[24, 24\] \(--data.init_args.patch_size\) differs from"
                   r" the generator's output \[12, 12\] .*generator.init_args.out_size=12"),
    ((12, 24, 12), r"critic does not accept the data's PatchData patch_size \[12, 12\].*critic.init_args.in_size=24"),
], ids=["generator_output", "critic_input"])  # fmt: skip
def test_size_that_differs_from_patch_size_is_named_before_a_step(sizes: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _fit(*sizes)
    assert CountingWGAN.steps == 0


def test_agreeing_sizes_train_and_leave_modes_alone() -> None:
    model = _fit(12, 12, 12)
    assert CountingWGAN.steps == 1 and model.generator.training and model.critic.training


def test_cli_fit_names_both_settings(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    args = cpu_args(CONFIGS / "experiment" / "cpu_wgan_gp_sn.yaml", cohort, tmp_path)
    with pytest.raises(ValueError, match=r"patch_size \[24, 24\] .*generator's output \[48, 48\].*out_size=48"):
        main(["fit", *args, "--model.init_args.generator.init_args.out_size", "48", "--trainer.max_epochs", "1"])
