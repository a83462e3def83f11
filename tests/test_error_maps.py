"""Error maps (Fig. 4): slice choice, colours at known TP/FP/FN voxels in the written PNG, logging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from matplotlib.image import imread
from torch.utils.data import DataLoader

from callbacks.error_maps import GAP, ErrorMapCallback, error_map_rgb, pick_slices

X, Y, Z = 20, 16, 6
RED, GREEN, YELLOW = (1, 0, 0), (0, 1, 0), (1, 1, 0)


def test_pick_slices_most_label_voxels_ties_to_lower_z():
    lab = np.zeros((4, 4, 6), bool)
    for z, n in {0: 1, 1: 5, 2: 3, 3: 3, 4: 0, 5: 5}.items():
        lab.reshape(-1, 6)[:n, z] = True
    assert pick_slices(lab, 3) == [1, 2, 5]  # counts 5, 5, then the tie 3/3 goes to z = 2
    assert pick_slices(lab, 1) == [1]


def test_colours_of_tp_fp_fn_and_background():
    image = np.full((3, 3), 0.25)
    label = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0]])
    rgb = error_map_rgb(image, label, pred)
    assert tuple(rgb[0, 0]) == RED and tuple(rgb[0, 1]) == YELLOW and tuple(rgb[0, 2]) == GREEN
    assert tuple(rgb[1, 1]) == (0.25, 0.25, 0.25)


class _Fixed(LightningModule):
    """test_step returns a known prediction: the label with one voxel added (FP) and one removed (FN)."""

    def __init__(self, report_dir: str) -> None:
        super().__init__()
        self.report_dir = report_dir
        self.w = torch.nn.Parameter(torch.zeros(1))

    def test_step(self, batch, batch_idx):
        pred = batch["label"].clone()
        pred[0, 0, 3, 4, 2] = 1  # FP (label 0 there)
        pred[0, 0, 10, 8, 2] = 0  # FN (label 1 there)
        return {"pred": pred.to(torch.uint8), "prob": pred.float(), "patient_id": list(batch["patient_id"]),
                "affine": batch["affine"]}


class _RecordingLogger(CSVLogger):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[tuple[str, list[str], list[str]]] = []

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.images.append((key, images, kwargs.get("caption")))


def _volume(pid: str) -> dict:
    label = torch.zeros(1, X, Y, Z)
    label[0, 10, 8, 2] = label[0, 11, 8, 2] = label[0, 12, 8, 2] = 1  # z = 2: most voxels
    label[0, 5, 5, 4] = label[0, 6, 5, 4] = 1  # z = 4: second
    label[0, 1, 1, 0] = 1  # z = 0: third
    image = torch.linspace(0, 100, X * Y * Z).reshape(1, X, Y, Z)
    return {"image": image, "label": label, "patient_id": pid, "affine": torch.eye(4, dtype=torch.float64)}


def _pixel(png: np.ndarray, panel: int, x: int, y: int) -> tuple:
    """Documented layout: rot90 panel (row = Y-1-y, column = x), panels GAP columns apart."""
    return tuple(np.round(png[Y - 1 - y, panel * (X + GAP) + x, :3], 3))


def test_callback_writes_pngs_with_exact_colours_and_logs_them(tmp_path):
    logger = _RecordingLogger(tmp_path / "logs")
    trainer = Trainer(accelerator="cpu", logger=logger, callbacks=[ErrorMapCallback(n_slices=3)],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.test(_Fixed(str(tmp_path / "report")), DataLoader([_volume("pa"), _volume("pb")], batch_size=1),
                 verbose=False)
    for pid in ("pa", "pb"):
        png = imread(tmp_path / "report" / "error_maps" / f"{pid}.png")
        assert png.shape[:2] == (Y, 3 * X + 2 * GAP)
        # chosen slices ascending: z = 0, 2, 4 → panels 0, 1, 2
        assert _pixel(png, 0, 1, 1) == RED
        assert _pixel(png, 1, 11, 8) == RED and _pixel(png, 1, 12, 8) == RED
        assert _pixel(png, 1, 10, 8) == YELLOW  # FN
        assert _pixel(png, 1, 3, 4) == GREEN  # FP
        assert _pixel(png, 2, 5, 5) == RED and _pixel(png, 2, 6, 5) == RED
        grey = _pixel(png, 1, 15, 2)
        assert grey[0] == grey[1] == grey[2]  # no error there: the image in grey
        assert tuple(png[0, X, :3]) == (1, 1, 1)  # the white gap between panels
    assert not list((tmp_path / "report" / "error_maps").glob(".*"))  # no temporary files left
    (key, images, captions), = logger.images
    assert key == "test/error_maps" and sorted(images) == sorted(str(tmp_path / "report" / "error_maps" / f"{p}.png")
                                                                  for p in ("pa", "pb"))
    assert "z = 0, 2, 4" in captions[0]


def test_invalid_n_slices():
    with pytest.raises(ValueError, match="n_slices"):
        ErrorMapCallback(n_slices=0)


def test_image_seen_on_another_grid_is_shown_on_the_label_grid():
    """With data.target_spacing the net's image is on a coarser grid: the map resamples it onto the label's grid."""
    from callbacks.error_maps import _native_image

    model_affine = torch.diag(torch.tensor([1.0, 1.0, 1.4, 1.0]))
    affine = torch.diag(torch.tensor([1.0, 1.0, 0.7, 1.0]))
    image = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 1, 6).expand(1, 1, 8, 8, 6)  # value = model z
    batch = {"image": image, "label": torch.zeros(1, 1, 8, 8, 12), "model_affine": model_affine[None],
             "affine": affine[None]}
    native = _native_image(batch)
    assert native.shape == (1, 1, 8, 8, 12)
    torch.testing.assert_close(native[0, 0, 3, 3, ::2], torch.arange(6, dtype=torch.float32))  # native z 2k = model z k
    same = {**batch, "image": torch.zeros(1, 1, 8, 8, 12)}
    assert _native_image(same) is same["image"]
