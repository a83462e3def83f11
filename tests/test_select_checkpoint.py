"""workflows.select_checkpoint: rules over fake checkpoint files and a hand-written metrics.csv, errors, a real run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from workflows.select_checkpoint import select_checkpoint

# epoch, step, val/fid (empty: not logged at that row) — step rows of epoch 1 end with 30.0, its last value
CSV = """epoch,step,train/loss,val/fid
0,9,1.5,
0,9,,50.0
1,19,1.2,
1,19,,20.0
1,24,,30.0
2,29,1.1,
2,29,,25.0
3,39,0.9,nan
4,49,0.8,10.0
"""


def make_run(root: Path, epochs=range(4), steps: int = 10, csv: str | None = CSV) -> Path:
    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True)
    for e in epochs:
        (ckpts / f"epoch={e}-step={(e + 1) * steps}.ckpt").write_bytes(b"fake")
    (ckpts / "last.ckpt").write_bytes(b"fake")
    (ckpts / "notes.txt").write_text("not a checkpoint")
    if csv is not None:
        (root / "metrics.csv").write_text(csv)
    return root


def test_last_picks_highest_epoch_and_records(tmp_path):
    run = make_run(tmp_path, epochs=[0, 1, 2, 10, 3])
    chosen = select_checkpoint(str(run))
    assert chosen == run / "checkpoints" / "epoch=10-step=110.ckpt"  # numeric, not lexicographic, order
    sel = json.loads((run / "selection.json").read_text())
    assert (sel["rule"], sel["epoch"], sel["value"], sel["checkpoint"]) == ("last", 10, None, str(chosen))
    assert [c["epoch"] for c in sel["candidates"]] == [0, 1, 2, 3, 10]


@pytest.mark.parametrize("rule, epoch, value", [("min:val/fid", 2, 25.0), ("max:val/fid", 0, 50.0), ("min:train/loss", 3, 0.9)])
def test_metric_rules(tmp_path, rule, epoch, value):
    # val/fid per epoch: 0 → 50, 1 → 30 (last of 20, 30), 2 → 25, 3 → nan (skipped), 4 → 10 (no checkpoint)
    run = make_run(tmp_path)
    chosen = select_checkpoint(str(run), rule)
    assert chosen.name == f"epoch={epoch}-step={(epoch + 1) * 10}.ckpt"
    sel = json.loads((run / "selection.json").read_text())
    assert (sel["epoch"], sel["value"], sel["metric"]) == (epoch, value, rule.split(":")[1])
    if rule.endswith("fid"):
        assert {c["epoch"]: c["value"] for c in sel["candidates"]} == {0: 50.0, 1: 30.0, 2: 25.0}


def test_min_epoch_leaves_out_early_epochs(tmp_path):
    run = make_run(tmp_path)  # val/fid 0 → 50, 1 → 30, 2 → 25: "max" would pick epoch 0
    assert select_checkpoint(str(run), "max:val/fid", min_epoch=1).name == "epoch=1-step=20.ckpt"
    sel = json.loads((run / "selection.json").read_text())
    assert sel["min_epoch"] == 1 and [c["epoch"] for c in sel["candidates"]] == [1, 2]
    with pytest.raises(ValueError, match="no epoch ≥ 3"):
        select_checkpoint(str(run), "min:val/fid", min_epoch=3)


def test_ties_go_to_the_earliest_epoch_and_explicit_csv(tmp_path):
    run = make_run(tmp_path / "run", csv=None)
    other = tmp_path / "elsewhere.csv"
    other.write_text("epoch,step,m\n0,1,2.0\n1,2,1.0\n2,3,1.0\n3,4,2.0\n")
    assert select_checkpoint(str(run), "min:m", metrics_csv=str(other)).name == "epoch=1-step=20.ckpt"
    assert select_checkpoint(str(run), "max:m", metrics_csv=str(other)).name == "epoch=0-step=10.ckpt"
    assert json.loads((run / "selection.json").read_text())["metrics_csv"] == str(other)


def test_duplicate_epoch_files_take_highest_step_then_newest(tmp_path):
    run = make_run(tmp_path, epochs=[0])
    ckpts = run / "checkpoints"
    (ckpts / "epoch=1-step=15.ckpt").write_bytes(b"x")
    (ckpts / "epoch=1-step=20.ckpt").write_bytes(b"x")
    newer = ckpts / "epoch=1-step=20-v1.ckpt"
    newer.write_bytes(b"x")
    os.utime(newer, (2e9, 2e9))
    assert select_checkpoint(str(run)) == newer
    assert select_checkpoint(str(ckpts)) == newer  # the checkpoints folder itself also works


def test_only_last_ckpt(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"epoch": 7, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "checkpoints" / "last.ckpt")
    assert select_checkpoint(str(tmp_path)).name == "last.ckpt"
    assert json.loads((tmp_path / "selection.json").read_text())["epoch"] == 7
    with pytest.raises(FileNotFoundError, match="no per-epoch checkpoints"):
        select_checkpoint(str(tmp_path), "min:val/fid")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        select_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no per-epoch checkpoints"):
        select_checkpoint(str(tmp_path / "empty"))
    run = make_run(tmp_path / "run")
    for bad in ("best", "min:", "median:val/fid", "min"):
        with pytest.raises(ValueError, match="rule must be"):
            select_checkpoint(str(run), bad)
    with pytest.raises(KeyError, match="'val/dsc' was never logged; logged keys: train/loss, val/fid"):
        select_checkpoint(str(run), "max:val/dsc")
    (run / "only_late.csv").write_text("epoch,step,m\n7,1,1.0\n")
    with pytest.raises(ValueError, match="no epoch ≥ 0 has both"):
        select_checkpoint(str(run), "min:m", metrics_csv=str(run / "only_late.csv"))
    no_csv = make_run(tmp_path / "no_csv", csv=None)
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        select_checkpoint(str(no_csv), "min:val/fid")
    assert not (no_csv / "selection.json").exists()


def test_real_lightning_run(tmp_path):
    """File names and metrics.csv as Lightning's ModelCheckpoint and CSVLogger write them."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from tests.test_dcgan import loader, tiny_dcgan

    L.seed_everything(0)
    logger = CSVLogger(tmp_path, name="run")
    t = L.Trainer(accelerator="cpu", max_epochs=3, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[ModelCheckpoint(save_top_k=-1, every_n_epochs=1, save_last=True)])  # fmt: skip
    t.fit(tiny_dcgan(), loader(2))
    run = Path(logger.log_dir)
    assert select_checkpoint(str(run)).name == "epoch=2-step=12.ckpt"  # 2 optimiser steps per batch
    chosen = select_checkpoint(str(run), "min:train/d_fake")
    sel = json.loads((run / "selection.json").read_text())
    assert [c["epoch"] for c in sel["candidates"]] == [0, 1, 2] and chosen.is_file()
    assert sel["value"] == min(c["value"] for c in sel["candidates"])
