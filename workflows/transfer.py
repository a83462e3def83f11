"""Transfer learning across cohorts (Kossen et al. 2021, Fig. 3 and 4) on the 1000Plus-like cohort.

For each number of training patients n (paper: 1, 3, …, 15; nested subsets, the same 10 validation and 40
test patients for every n, `datamodules.splits`), two U-Nets are fitted with the same seed and settings:
from scratch, and initialised from `pretrained` (a U-Net trained on synthetic pairs of the first cohort,
`SegmentationModule(pretrained=...)`). Each is validated on the validation patients during fit, the epoch is
chosen on `val/dsc` (`select`, as in `workflows.grid_search`), and that checkpoint is tested on the test
patients (per-patient DSC / 95HD / bAVD, error maps: Fig. 4 is `runs/n01-scratch/test/error_maps/` next to
`runs/n01-pretrained/test/error_maps/`). All runs share one W&B group.

Outputs in `out_dir`: transfer.csv, transfer.png (DSC and 95HD, mean ± SD over test patients against n, the
first cohort's real-data U-Net as a dotted reference line when `reference_summary` is given), README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from datamodules.splits import THOUSANDPLUS_TRAIN_SUBSETS  # noqa: E402
from workflows.grid_search import Select, run_fit, run_test  # noqa: E402
from workflows.report import markdown_table, mean_sd, write_csv  # noqa: E402

INITS = ("scratch", "pretrained")
COLOURS = {"scratch": "tab:green", "pretrained": "tab:blue"}
COLUMNS = ["n_train", "init", "val_dsc", "epoch", "dsc_mean", "dsc_std", "hd95_mean", "hd95_std", "bavd_mean",
           "bavd_std", "n_patients", "checkpoint", "report"]


def reference_metrics(path: str | None) -> dict[str, float] | None:
    """All-vessel means of a test_summary.json (the reference U-Net), or None."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: reference test summary not found")
    results = json.loads(file.read_text()).get("results", {}).get("all")
    if not results:
        raise ValueError(f"{file}: no results.all in this test summary (written by SegmentationModule.test)")
    return {k: v for k, v in results.items() if isinstance(v, int | float)}


def plot_transfer(rows: list[dict[str, Any]], out_png: Path, reference: dict[str, float] | None = None,
                  title: str = "") -> Path:
    """Fig. 3: DSC and 95HD (mean ± SD over test patients) against the number of training patients."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in zip(axes, ("dsc", "hd95"), ("DSC", "95HD (mm)")):
        for k, init in enumerate(INITS):
            pts = sorted((r["n_train"], r[f"{metric}_mean"], r[f"{metric}_std"]) for r in rows if r["init"] == init)
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            n, mean, sd = zip(*pts)
            ax.errorbar([x + (k - 0.5) * 0.15 for x in n], mean, yerr=[s or 0.0 for s in sd], color=COLOURS[init],
                        marker="o", capsize=3, label="from scratch" if init == "scratch" else "pre-trained")
        if reference and reference.get(f"{metric}_mean") is not None:
            ax.axhline(reference[f"{metric}_mean"], color="black", ls=":", label="real-data U-Net, first cohort")
        ax.set_xlabel("training patients")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({r["n_train"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def write_report(out: Path, rows: list[dict[str, Any]], reference: dict[str, float] | None, pretrained: str,
                 experiment: str) -> Path:
    write_csv(rows, COLUMNS, out / "transfer.csv")
    plot_transfer(rows, out / "transfer.png", reference, f"{Path(experiment).stem}: scratch vs pre-trained")
    table = markdown_table([{"n": r["n_train"], "init": r["init"], "val DSC": f"{r['val_dsc']:.3f}",
                             "test DSC": mean_sd(r, "dsc"),
                             "test 95HD (mm)": mean_sd(r, "hd95"),
                             "test bAVD (mm)": mean_sd(r, "bavd")} for r in rows],
                           ["n", "init", "val DSC", "test DSC", "test 95HD (mm)", "test bAVD (mm)"])  # fmt: skip
    ref = (f"Reference (real-data U-Net of the first cohort): DSC {mean_sd(reference, 'dsc')}"
           f", 95HD {mean_sd(reference, 'hd95')} mm." if reference else "")
    lines = ["# Transfer learning across cohorts", "", f"Experiment `{experiment}`; pre-trained U-Net `{pretrained}`.",
             "Mean ± SD over test patients; the epoch of each run chosen on validation DSC.", "", table, "", ref, "",
             "![transfer](transfer.png)", "",
             "Error maps (TP red, FP green, FN yellow): `runs/<run>/test/error_maps/<patient>.png`.", ""]  # fmt: skip
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def transfer_sweep(
    out_dir: str,
    pretrained: str,
    n_train: list[int] = list(THOUSANDPLUS_TRAIN_SUBSETS),  # noqa: B006, B008 - read only
    experiment: str = "kossen2021_transfer_1000plus.yaml",
    reference_summary: str | None = None,
    extra_args: list[str] | None = None,
    select: Select = "best",
    seed: int = 0,
    group: str | None = None,
    wandb: bool = True,
    error_maps: bool = True,
) -> Path:
    """Runs the sweep and returns `out_dir` (transfer.csv, transfer.png, README.md, runs/).

    Args:
        out_dir: folder of runs and report.
        pretrained: checkpoint of a U-Net trained on synthetic pairs, same architecture as the experiment's net.
        n_train: numbers of training patients (the cohort must hold max(n_train) + n_val + n_test patients).
        experiment: experiment file (configs/experiment/ name or path); cpu_transfer_1000plus.yaml on a CPU.
        reference_summary: test_summary.json of the real-data U-Net of the first cohort (dotted line).
        extra_args: more CLI arguments for every fit and test (e.g. `--trainer.max_epochs 3`); n_train and
            pretrained are set after them.
        select: "best" or "last" epoch of each run (workflows.grid_search).
        seed: `--seed_everything` of every run.
        group: W&B group of all runs (default "transfer-" + the out_dir name).
        wandb: False for CSV logs only (no W&B runs).
        error_maps: write error maps of the test patients.
    """
    if not Path(pretrained).is_file():
        raise FileNotFoundError(f"{pretrained}: pre-trained checkpoint not found")
    reference = reference_metrics(reference_summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = (group or f"transfer-{out.name}") if wandb else None
    common = ["--seed_everything", str(seed), *(extra_args or [])]
    rows = []
    for n in n_train:
        for init in INITS:
            run = f"n{n:02d}-{init}"
            init_args = ["--model.init_args.pretrained", str(pretrained) if init == "pretrained" else "null"]
            args = [*common, "--data.init_args.n_train", str(n)]
            fit = run_fit(experiment, run, out, [*args, *init_args], group, select)
            epoch, val_dsc, ckpt = fit.epoch, fit.score, fit.checkpoint
            report = out / "runs" / run / "test"
            # The checkpoint holds the fine-tuned weights: no need to read the pre-trained file again.
            summary = run_test(experiment, f"{run}-test", ckpt, out, report,
                               [*args, "--model.init_args.pretrained", "null"], group, error_maps)
            res = summary["results"]["all"]
            rows.append({"n_train": n, "init": init, "val_dsc": val_dsc, "epoch": epoch,
                         **{f"{m}_{s}": res.get(f"{m}_{s}") for m in ("dsc", "hd95", "bavd") for s in ("mean", "std")},
                         "n_patients": res.get("n_patients"), "checkpoint": str(ckpt), "report": str(report)})  # fmt: skip
    write_report(out, rows, reference, str(pretrained), experiment)
    return out
