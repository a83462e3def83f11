"""Grid search on validation DSC: pure picking logic, the workflow with a stubbed fit, one tiny real grid."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_helpers import TEST_CONFIGS
from tests.fixtures_cohort import write_tiny_cohort
from workflows import grid_search as gs


def test_grid_members_product_order_and_names():
    members = gs.grid_members([1e-4, 8e-5], [0.0, 0.1], [False, True])
    assert len(members) == 8 and len({m["member"] for m in members}) == 8
    assert [(m["lr"], m["dropout"], m["augment"]) for m in members[:3]] == [
        (1e-4, 0.0, False), (1e-4, 0.0, True), (1e-4, 0.1, False)]
    assert all(m["batch_size"] is None for m in members)
    assert len(gs.grid_members([1e-4], [0.0], [False], [32, 64])) == 2
    with pytest.raises(ValueError):
        gs.grid_members([], [0.0], [False])


def test_member_args_set_lr_dropout_augment_and_batch_size():
    args = gs.member_args({"lr": 8e-5, "dropout": 0.1, "augment": True, "batch_size": 32})
    pairs = dict(zip(args[::2], args[1::2]))
    assert float(pairs["--model.init_args.optimizer.init_args.lr"]) == 8e-5
    assert float(pairs["--model.init_args.net.init_args.dropout"]) == 0.1
    assert pairs["--data.init_args.augment"] == "true" and pairs["--data.init_args.batch_size"] == "32"


def test_select_member_highest_ties_first_nan_never():
    assert gs.select_member([{"val_dsc": 0.5}, {"val_dsc": 0.7}, {"val_dsc": 0.6}]) == 1
    assert gs.select_member([{"val_dsc": 0.7}, {"val_dsc": 0.7}]) == 0
    assert gs.select_member([{"val_dsc": math.nan}, {"val_dsc": 0.1}, {"val_dsc": None}]) == 1
    with pytest.raises(ValueError, match="finite"):
        gs.select_member([{"val_dsc": math.nan}])


def test_epoch_scores_and_pick_epoch(tmp_path):
    path = tmp_path / "metrics.csv"  # the shape CSVLogger writes: train and val rows with empty cells
    path.write_text("epoch,step,train/loss_epoch,val/dsc,val/loss\n0,5,,0.40,0.9\n0,5,0.8,,\n"
                    "1,11,,0.70,0.5\n1,11,0.6,,\n2,17,,0.70,0.4\n3,23,,0.65,0.4\n")
    scores = gs.epoch_scores(path)
    assert scores == {0: 0.40, 1: 0.70, 2: 0.70, 3: 0.65}
    assert gs.pick_epoch(scores, "best") == (1, 0.70)  # ties → the earlier epoch
    assert gs.pick_epoch(scores, "last") == (3, 0.65)
    assert gs.pick_epoch({0: math.nan, 1: 0.2}, "best") == (1, 0.2)
    with pytest.raises(ValueError):
        gs.pick_epoch({}, "best")


def test_run_fragments_share_the_wandb_group_and_add_the_selection_checkpoint(tmp_path):
    args = gs.run_fragments("m1", tmp_path, "grid-x", "best")
    cfg = yaml.safe_load(Path(args[1]).read_text())["trainer"]
    assert cfg["logger"][0]["class_path"].endswith("CSVLogger")
    assert cfg["logger"][1]["init_args"]["group"] == "grid-x"
    (ckpt,) = cfg["callbacks+"]
    assert ckpt["init_args"]["monitor"] == "val/dsc" and ckpt["init_args"]["mode"] == "max"
    last = yaml.safe_load(Path(gs.run_fragments("m2", tmp_path, None, "last")[1]).read_text())["trainer"]
    assert len(last["logger"]) == 1 and last["callbacks+"][0]["init_args"]["monitor"] == "epoch"


def test_grid_search_picks_the_member_with_best_validation_dsc(tmp_path, monkeypatch):
    designed = {"lr0.0001_do0_aug0": 0.61, "lr0.0001_do0_aug1": 0.64, "lr0.0001_do0.1_aug0": 0.59,
                "lr0.0001_do0.1_aug1": math.nan, "lr8e-05_do0_aug0": 0.66, "lr8e-05_do0_aug1": 0.62,
                "lr8e-05_do0.1_aug0": 0.66, "lr8e-05_do0.1_aug1": 0.60}  # fmt: skip
    fits, tests = [], []

    def fake_fit(experiment, run, out, args, group, select="best"):
        fits.append((run, list(args), group))
        return gs.FitResult(run, out / "m.csv", out / f"{run}.ckpt", 3, designed[run])

    def fake_test(experiment, run, ckpt, out, report_dir, args, group, error_maps=True):
        tests.append((ckpt, list(args), group))
        return {}

    monkeypatch.setattr(gs, "run_fit", fake_fit)
    monkeypatch.setattr(gs, "run_test", fake_test)
    out = gs.grid_search("kossen2021_unet.yaml", str(tmp_path / "g"), extra_args=["--trainer.max_epochs", "2"])
    assert [f[0] for f in fits] == list(designed)
    assert {f[2] for f in fits} == {"grid-g"} and tests[0][2] == "grid-g"  # one W&B group for all runs
    selection = json.loads((out / "selection.json").read_text())
    assert selection["chosen"]["member"] == "lr8e-05_do0_aug0"  # 0.66, tied with a later member
    ckpt, args, _ = tests[0]
    assert ckpt == tmp_path / "g" / "lr8e-05_do0_aug0.ckpt"
    assert args.index("--trainer.max_epochs") < args.index("--model.init_args.optimizer.init_args.lr")
    with open(out / "grid.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["member"] for r in rows] == list(designed) and float(rows[4]["val_dsc"]) == 0.66


@pytest.mark.slow
def test_tiny_real_grid(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "cohort", n_patients=6)
    extra = ["--config", str(TEST_CONFIGS / "tiny_seg.yaml"), "--data.init_args.cohort_dir", str(cohort),
             "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2"]
    out = gs.grid_search("cpu_unet.yaml", str(tmp_path / "grid"), lrs=[3e-2, 1e-4], dropouts=[0.0], augment=[True],
                         extra_args=extra, wandb=False)
    with open(out / "grid.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:  # each member's score is its best epoch's val/dsc, read here straight from its CSV log
        (log,) = (tmp_path / "grid" / "runs" / row["member"]).glob("version_*/metrics.csv")
        with open(log) as fh:
            val = {int(r["epoch"]): float(r["val/dsc"]) for r in csv.DictReader(fh) if r["val/dsc"]}
        best = max(val.values())
        assert float(row["val_dsc"]) == pytest.approx(best)
        assert int(row["epoch"]) == min(e for e, v in val.items() if v == best)
        ckpt = torch.load(row["checkpoint"], map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == int(row["epoch"])
    selection = json.loads((out / "selection.json").read_text())
    chosen = max(rows, key=lambda r: float(r["val_dsc"]))
    assert selection["chosen"]["member"] == chosen["member"]
    summary = json.loads(Path(selection["test_summary"]).read_text())
    assert summary["results"]["all"]["n_patients"] == 2
    assert len(list((out / "test" / "error_maps").glob("*.png"))) == 2
