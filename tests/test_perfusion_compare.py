"""`perfusion_compare`: both architectures, acute-like rows and fine-tuned steno-occlusive rows, the table, README and
figure; a rerun skips finished rows; changed settings are refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

import cli
from workflows.perfusion_compare import perfusion_compare

pytestmark = pytest.mark.slow


def tiny_args(cohort: Path) -> list[str]:
    return ["--data.init_args.cohort_dir", str(cohort), "--data.init_args.simulate", "null",
            "--data.init_args.batch_size", "2", "--trainer.max_epochs", "1"]  # fmt: skip


def test_compare_writes_the_thesis_table_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.perfusion_fixtures import write_tiny_cohort

    acute = write_tiny_cohort(tmp_path / "acute", n_patients=4, shape=(32, 32, 2), profile="acute")
    steno = write_tiny_cohort(tmp_path / "steno", n_patients=4, shape=(32, 32, 2), profile="steno")
    settings = dict(maps=["tmax"], acute_args=tiny_args(acute), steno_args=tiny_args(steno), wandb=False)
    out = perfusion_compare(str(tmp_path / "cmp"), **settings)

    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert {(r["cohort"], r["architecture"]) for r in rows} == {
        (c, a) for c in ("acute", "steno") for a in ("pix2pix", "temp-pix2pix", "oSVD pipeline")}
    pipeline = [r for r in rows if r["architecture"] == "oSVD pipeline"]
    assert {r["comparison"] for r in pipeline} == {"pipeline_vs_truth"} and len(pipeline) == 4  # 2 cohorts × 2 regions
    assert all(-1 <= float(r["ssim_mean"]) <= 1 and float(r["mae_mean"]) >= 0 for r in rows)
    assert all(float(r["ssim_mean"]) > 0.2 for r in pipeline)  # oSVD is close to the truth; 1-epoch nets are not
    readme = (out / "README.md").read_text()
    assert "SSIM temp-pix2pix" in readme and "MAE oSVD pipeline" in readme and "figure_steno.png" in readme
    for cohort in ("acute", "steno"):
        picture = imread(out / f"figure_{cohort}.png")
        assert picture.shape[0] > 100 and picture.std() > 0

    acute_ckpt = next(r["checkpoint"] for r in rows if r["cohort"] == "acute" and r["architecture"] == "temp-pix2pix")
    (config,) = (out / "runs" / "steno-tmax-temp-pix2pix").glob("version_*/config.yaml")
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["pretrained"] == acute_ckpt  # fine-tuned

    def no_runs(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(cli, "main", no_runs)
    before = (out / "comparison.csv").read_text()
    perfusion_compare(str(tmp_path / "cmp"), **settings)
    assert (out / "comparison.csv").read_text() == before
    with pytest.raises(ValueError, match="other settings \\(seed\\)"):
        perfusion_compare(str(tmp_path / "cmp"), seed=1, **settings)
