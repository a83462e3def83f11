"""Checkpoints are data, never code: crafted pickles and class paths are refused by every loading command,
and nothing they name is run or imported (a marker file would prove it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.gan_evaluation import GANEvaluationCallback
from cli import main
from lightning_modules.checkpoints import ALLOW_ENV, UnsafeCheckpointError, check_class_path, safe_load
from lightning_modules.gan_base import build_network, build_optimizer
from lightning_modules.wgan import WGANGP
from networks.feature_extractors import MedicalNetFeatures, SegmentationEncoderFeatures
from networks.gan2d import Generator2D, WGANCritic2D
from networks.unet2d import HalfUNet2D
from workflows.domain_extractor import domain_extractor
from workflows.synthesize import synthesize

SIZE = 12


class _MkdirOnLoad:
    """Unpickling this runs os.mkdir(marker): the stand-in for a shell command in a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose unpickling creates `marker`; checked to really do so under weights_only=False."""
    marker, path = tmp_path / "PWNED", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "epoch": 0, "payload": _MkdirOnLoad(marker)}, path)
    torch.load(path, weights_only=False)  # the file is what it claims: loading it unsafely runs the payload
    assert marker.is_dir()
    marker.rmdir()
    return path, marker


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = WGANGP(Generator2D(8, 4, out_size=SIZE), WGANCritic2D(ndf=4, in_size=SIZE), latent_dim=8, n_critic=1,
                   n_sample_grid=2)
    data = [{"image": torch.rand(1, SIZE, SIZE) * 2 - 1, "label": torch.zeros(1, SIZE, SIZE)} for _ in range(4)]
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(data, batch_size=2))
    path = tmp_path_factory.mktemp("gan") / "gan.ckpt"
    trainer.save_checkpoint(path)
    return path


def _assert_refused_pickle(err: BaseException, path: Path, marker: Path) -> None:
    assert str(path) in str(err) and "weights_only=False" not in str(err)
    assert not marker.exists()


# --------------------------------------------------------------------------- pickles
def test_safe_load_refuses_pickled_code_and_names_the_file(crafted) -> None:
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match="posix.mkdir|mkdir") as err:
        safe_load(path, "GAN checkpoint")
    _assert_refused_pickle(err.value, path, marker)
    assert "GAN checkpoint" in str(err.value)


def test_every_loader_refuses_a_crafted_pickle(crafted, tmp_path: Path) -> None:
    path, marker = crafted
    loaders = {
        "synthesize": lambda: main(["synthesize", "--checkpoint", str(path), "--out_dir", str(tmp_path / "store")]),
        "select": lambda: main(["select", "--run_dir", str(_run_with_last(tmp_path / "run", path))]),
        "fid_extractor": lambda: domain_extractor(str(path)),
        "evaluation callback": lambda: GANEvaluationCallback(extractor_checkpoint=str(path)).setup(
            SimpleNamespace(is_global_zero=True, datamodule=None), SimpleNamespace(generate=None), "fit"),
        "test report meta": lambda: GANEvaluationCallback()._test_meta(SimpleNamespace(ckpt_path=str(path)),
                                                                      torch.nn.Linear(1, 1), 1, 1, 1),
        "segmentation encoder": lambda: SegmentationEncoderFeatures(str(path), HalfUNet2D(features=[4, 8]),
                                                                    layer_name="encoders.1"),
        "medicalnet": lambda: MedicalNetFeatures(str(path)),
    }
    for name, load in loaders.items():
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        named = tmp_path / "run" / "checkpoints" / "last.ckpt" if name == "select" else path
        _assert_refused_pickle(err.value, named, marker)
    assert not (tmp_path / "store").exists()


def _run_with_last(run: Path, ckpt: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    return run


def test_truncated_and_foreign_files_are_named(gan_ckpt: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(gan_ckpt.read_bytes()[: gan_ckpt.stat().st_size // 2])
    foreign = tmp_path / "notes.ckpt"
    foreign.write_text("not a checkpoint\n")
    for bad in (truncated, foreign):
        with pytest.raises(ValueError, match=rf"{bad}: cannot read as GAN checkpoint: truncated, damaged") as err:
            synthesize(str(bad), str(tmp_path / "store"), n_samples=2)
        assert "weights_only=False" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="gone.ckpt: GAN checkpoint not found"):
        synthesize(str(tmp_path / "gone.ckpt"), str(tmp_path / "store"), n_samples=2)


# --------------------------------------------------------------------------- class paths
@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module whose import creates a marker (module-level code runs before any type check)."""
    name, marker = f"evil_{os.getpid()}_{tmp_path.name}".replace("-", "_"), tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).mkdir()\n"
                                         "import torch\nclass Gen(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    return name, marker


def _tampered(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("where", ["gan_class", "generator", "optimizer", "_class_path"])
def test_synthesize_refuses_foreign_class_paths_before_importing(gan_ckpt, evil_module, tmp_path, where) -> None:
    name, marker = evil_module
    edits = {
        "gan_class": lambda c: c.update(gan_class=f"{name}.Gen"),
        "generator": lambda c: c["hyper_parameters"]["generator"].update(class_path=f"{name}.Gen"),
        "optimizer": lambda c: c["hyper_parameters"].update(generator_optimizer={"class_path": "os.system",
                                                                                  "init_args": {}}),
        "_class_path": lambda c: c["hyper_parameters"].update(_class_path=f"{name}.Gen"),
    }
    path = _tampered(gan_ckpt, tmp_path / "tampered.ckpt", edits[where])
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}.*outside the packages.*{ALLOW_ENV}"):
        synthesize(str(path), str(tmp_path / "store"), n_samples=2)
    assert not marker.exists() and name not in sys.modules and not (tmp_path / "store").exists()


def test_an_explicit_allow_list_is_the_only_way_in(gan_ckpt, evil_module, tmp_path, monkeypatch) -> None:
    """With the module allowed by the user, the import happens (so the refusal above is what prevented it)."""
    name, marker = evil_module
    path = _tampered(gan_ckpt, tmp_path / "tampered.ckpt", lambda c: c.update(gan_class=f"{name}.Gen"))
    monkeypatch.setenv(ALLOW_ENV, f"some.other, {name}")
    with pytest.raises(TypeError, match="not a lightning_modules.gan_base.GANModule subclass"):
        synthesize(str(path), str(tmp_path / "store"), n_samples=2)
    assert marker.exists()
    sys.modules.pop(name, None)


def test_specs_in_hparams_are_checked_before_import(evil_module) -> None:
    name, marker = evil_module
    for bad in ("os.system", f"{name}.Gen", "subprocess.Popen", "networks.gan2d.Generator2D; import os", "Gen"):
        with pytest.raises(UnsafeCheckpointError):
            build_network({"class_path": bad, "init_args": {}}, "generator")
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        build_optimizer({"class_path": "os.system", "init_args": {"command": "touch x"}})
    with pytest.raises(TypeError, match="Optimizer"):
        build_optimizer({"class_path": "torch.nn.Linear"})
    assert not marker.exists()
    # prefixes are whole module names: "networksX" is not "networks"
    with pytest.raises(UnsafeCheckpointError):
        check_class_path("networksevil.Gen", "f.ckpt", "class")
    assert check_class_path("torch.optim.Adam", "f.ckpt", "class") == "torch.optim.Adam"


def test_domain_extractor_refuses_a_foreign_net_class(evil_module, tmp_path: Path) -> None:
    name, marker = evil_module
    path = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {"class_path": f"{name}.Gen", "init_args": {}}}}, path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        domain_extractor(str(path))
    assert not marker.exists() and name not in sys.modules
