"""`tofgan demo` / `make demo`: the whole main job on the embedded simulated cohort (`--dims 3`: the 3D paper's
path, `workflows.demo3d`).

simulate cohort → WGAN-GP-SN fit → synthesise pairs → U-Net fit on synthetic and on real patches →
test both on the real test patients → table + report folder. Skull-stripped as the 2D paper's cohorts
(`skull_strip: true` in cpu_wgan_gp_sn.yaml and cpu_unet.yaml; GAN and U-Net data must agree).
Every step is a `tofgan` command (`cli.main`), so the demo is also the documented recipe for running
the same path on your own cohort.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from workflows.compose import experiment_args
from workflows.grid_search import run_fit, run_test
from workflows.runs import Select, finish_wandb, run_fragments
from workflows.report import markdown_table, mean_sd, plot_curves, write_csv

GAN = "cpu_compare_wgan_gp_sn.yaml"
UNET = "cpu_unet.yaml"
METRICS = ("dsc", "hd95", "bavd")


def _fit(experiment: str, run: str, out: Path, extra: list[str], keep_cli: bool = False) -> Any:
    """Fits through the CLI and returns the run's last checkpoint (full state, resumable); with `keep_cli` also
    the CLI object (its datamodule holds the real patches)."""
    from cli import main

    cli = main(["fit", *experiment_args(experiment), *run_fragments(run, out, "demo"), *extra])
    finish_wandb()
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    return (ckpt, cli) if keep_cli else ckpt


def _test(experiment: str, run: str, ckpt: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    summary = run_test(experiment, run, ckpt, out, out / run, extra, "demo", error_maps=False)
    return summary["results"]


def _fit_unet(unet: str, run: str, out: Path, extra: list[str], select: Select | None) -> tuple[Path, int | None]:
    """The U-Net's checkpoint: the last epoch's, or with `select` the one `workflows.grid_search.run_fit` keeps (best
    validation DSC, as `tofgan compare` chooses), and that epoch."""
    if select is None:
        return _fit(unet, run, out, extra), None
    fit = run_fit(unet, run, out, extra, "demo", select)
    return fit.checkpoint, fit.epoch


def _unet_rows(unet: str, gan: str, metrics: Sequence[str], stores: Sequence[str], out: Path,
               extra: list[str], select: Select | None = None) -> list[dict[str, Any]]:
    """U-Net `unet` fitted on the synthetic `stores` (pooled) and on the real patches, each tested on the real test
    patients; one row per (training data, vessels); with `select` the rows name the chosen epoch."""
    synth_args = ["--data.init_args.use_real", "false", "--data.init_args.synthetic_stores", json.dumps(list(stores))]
    unet_synth = _fit_unet(unet, "unet-synthetic", out, extra + synth_args, select)
    unet_real = _fit_unet(unet, "unet-real", out, extra, select)
    rows = []
    for name, (ckpt, epoch) in ((f"synthetic ({gan})", unet_synth), ("real", unet_real)):
        results = _test(unet, f"test-{name.split()[0]}", ckpt, out, extra)
        for voxels, summary in results.items():  # "all" vessels, and "intracranial" with brain masks
            rows.append({"training data": name, "vessels": voxels, **{m.upper(): mean_sd(summary, m) for m in metrics},
                         "dsc_mean": summary.get("dsc_mean"), "patients": int(summary.get("n_patients", 0)),
                         **({"U-Net epoch": epoch} if select else {})})  # fmt: skip
    return rows


def run_demo(out_dir: str | None = None, n_synthetic: int | None = None, seed: int = 0,
             gan_args: list[str] | None = None, unet_args: list[str] | None = None, dims: Literal[2, 3] = 2) -> Path:
    """Runs the demo and returns the report folder.

    Args:
        out_dir: where runs, synthetic store and the report go (default outputs/demo, 3D: outputs/demo3d).
        n_synthetic: synthetic pairs to write (default 2000, matching the 2D demo's 2,000 real training patches,
            paper 41,000; 3D: 1500, the 3D U-Net's real training patches (1,000 vessel-centred + 500 random), so both
            U-Nets take the same number of steps (with 1,000 the synthetic one took ⅔ of them); paper 11,750).
        seed: seed of every step.
        gan_args: more CLI arguments for the GAN fit (e.g. another `--data.init_args.cohort_dir`).
        unet_args: more CLI arguments for the U-Net fits and tests.
        dims: 2 (the 2D paper's pipeline) or 3 (the 3D paper's: 3D GAN, 3D U-Net, 3D sliding window).
    """
    from workflows.synthesize import synthesize

    if dims not in (2, 3):
        raise ValueError(f"tofgan demo: dims must be 2 or 3, got {dims}")
    out = Path(out_dir or ("outputs/demo" if dims == 2 else "outputs/demo3d"))
    if dims == 3:
        from workflows.demo3d import run_demo3d

        return run_demo3d(out, n_synthetic or 1500, seed, gan_args or [], unet_args or [])
    n_synthetic = n_synthetic or 2000
    started = time.time()
    seed_arg = ["--seed_everything", str(seed)]
    gan_ckpt = _fit(GAN, "gan", out, [*seed_arg, *(gan_args or [])])
    store = synthesize(str(gan_ckpt), str(out / "synthetic"), n_samples=n_synthetic, seed=seed, overwrite=True,
                       wandb_group="demo")
    rows = _unet_rows(UNET, "WGAN-GP-SN", METRICS, [str(store)], out, [*seed_arg, *(unet_args or [])])
    minutes = (time.time() - started) / 60
    return _write_report(out, rows, minutes)


def _write_report(out: Path, rows: list[dict[str, Any]], minutes: float) -> Path:
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    columns = ["training data", "vessels", "DSC", "HD95", "BAVD", "patients"]
    write_csv(rows, columns, report / "results.csv")
    table = markdown_table(rows, columns)
    csvs = sorted(out.glob("runs/gan/version_*/metrics.csv"))
    lines = ["# tofgan demo", "", f"Wall time of the pipeline: {minutes:.1f} min.", "",
             "U-Net tested on the real (simulated) test patients, mean ± SD over patients; HD95 and BAVD in "
             "mm. `intracranial`: label and prediction masked with the brain mask (SPEC §4). The demo follows "
             "the 2D paper's skull-stripped protocol (`skull_strip: true` in cpu_*.yaml): image, label and "
             "prediction are cut to the brain mask, so the `all` and `intracranial` rows agree; unstripped (the 3D "
             "paper's protocol) false positives outside the brain lower the `all` row.", "", table, ""]  # fmt: skip
    if csvs:
        plot_curves(csvs[-1], ["train/critic_loss", "train/generator_loss", "train/wasserstein",
                               "train/gradient_penalty"], report / "gan_losses.png", "WGAN-GP-SN")  # fmt: skip
        lines += ["## GAN training", "", "![losses](gan_losses.png)", ""]
    grids = sorted(out.glob("runs/gan/**/samples/*.png"))
    if grids:
        (report / "samples.png").write_bytes(grids[-1].read_bytes())
        lines += [f"## Fixed-noise samples ({grids[-1].stem})", "", "![samples](samples.png)", ""]
    (report / "README.md").write_text("\n".join(lines))
    print("\n" + table + f"\n\nReport: {report}/README.md ({minutes:.1f} min)")
    return report
