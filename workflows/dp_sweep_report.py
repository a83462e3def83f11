"""Report of `tofgan dp-sweep` (workflows/dp_sweep.py): repeats summarised as mean ± 95 % t-interval, CSV, markdown, PNG.

A single GAN + U-Net run on 4 test patients scatters by about ±0.1 DSC (docs/DP_RESULTS.md: three runs of one recipe
gave 0.41, 0.49, 0.54), so each row is trained `repeats` times with different seeds and reported as the mean over
repeats of the per-run test DSC (each run's DSC is its mean over the test patients) with a Student-t 95 % interval
over the n repeats (n − 1 degrees of freedom; none for n = 1, where the SD over test patients is shown instead).
The interval covers the run-to-run variation of the whole pipeline (GAN training, DP noise, synthesis, U-Net) for the
fixed cohort and test patients, and, for fine-tuned rows, for the one public pre-trained GAN the sweep makes.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import scipy.stats

from workflows.report import markdown_table, write_csv

VESSELS = ("intracranial", "all")
#: Fields that are the same in every repeat of a row (the first repeat's are reported).
ROW_FIELDS = ("row", "unit", "pretrained", "sigma", "target_epsilon", "epsilon_prv", "delta", "steps", "sample_rate")


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the two-sided 95 % Student-t interval (None below two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(scipy.stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the repeats of a row (each a `dp_sweep.result` record)."""
    out = {k: runs[0].get(k) for k in ROW_FIELDS}
    eps = [r.get("epsilon") for r in runs]
    out["epsilon"] = None if None in eps else max(eps)  # the same target in every repeat; the largest is what holds
    out["repeats"] = len(runs)
    for v in VESSELS:
        dsc = [r[f"dsc_{v}_mean"] for r in runs if r.get(f"dsc_{v}_mean") is not None]
        mean, ci = mean_ci(dsc) if dsc else (None, None)
        out[f"dsc_{v}_mean"], out[f"dsc_{v}_ci95"] = mean, ci
        out[f"dsc_{v}_runs"] = ";".join(f"{x:.4f}" for x in dsc)
    out["dsc_intracranial_patient_sd"] = runs[0].get("dsc_intracranial_std") if len(runs) == 1 else None
    out["gan_epoch"] = ";".join(sorted({str(r.get("gan_epoch")) for r in runs if r.get("gan_epoch") is not None})) or None
    return out


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Utility ratio = row mean / real mean; its interval is the row's interval over the real mean (real held fixed)."""
    real = next((r for r in rows if r["row"] == "real"), None)
    ref = real and real.get("dsc_intracranial_mean")
    for r in rows:
        mean, ci = r.get("dsc_intracranial_mean"), r.get("dsc_intracranial_ci95")
        r["utility_ratio"] = mean / ref if ref and mean is not None else None
        r["utility_ratio_ci95"] = ci / ref if ref and ci is not None else None
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(rows, list(dict.fromkeys(k for r in rows for k in r)), path)  # every field any record has


def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _pm(mean: float | None, ci: float | None, sd: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f} ± {ci:.3f}" if ci is not None else (f"{mean:.3f} (SD {sd:.3f} over patients)" if sd else f"{mean:.3f}")


def write_outputs(out: Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """dp_sweep.csv (one row per sweep row, repeats summarised), dp_sweep_runs.csv (every repeat), README.md, dp_sweep.png.

    `runs`: row name → its finished repeats' records (a record has a "repeat" index), in table order."""
    _write_rows(out / "dp_sweep_runs.csv", [r for reps in runs.values() for r in reps])
    rows = with_ratios([summarise(reps) for reps in runs.values() if reps])
    _write_rows(out / "dp_sweep.csv", rows)
    table = [{"row": r["row"], "unit": _fmt(r["unit"]), "σ": _fmt(r["sigma"]), "ε RDP": _fmt(r["epsilon"]),
              "ε PRV": _fmt(r["epsilon_prv"]), "δ": _fmt(r["delta"]), "critic steps": _fmt(r["steps"]), "n": str(r["repeats"]),
              "test DSC intracranial": _pm(r["dsc_intracranial_mean"], r["dsc_intracranial_ci95"], r["dsc_intracranial_patient_sd"]),
              "ratio to real": _pm(r["utility_ratio"], r["utility_ratio_ci95"])} for r in rows]  # fmt: skip
    lines = ["# DP-WGAN ε sweep", "", "ε: RDP (the guarantee) of the selected snapshot; PRV alongside. DSC: U-Net trained on "
             "the synthetic pairs only, tested on the real test patients (intracranial vessels; all vessels in the CSV); "
             "mean over n repeats (different seeds) ± the half-width of the 95 % Student-t interval over the repeats "
             "(n − 1 degrees of freedom); with n = 1 no interval. Ratio: row mean / real mean (its interval: the row's, the real mean held fixed). Selection on "
             "validation patients (outside the guarantee unless public). Every repeat: dp_sweep_runs.csv.", "",
             markdown_table(table, list(table[0]))]  # fmt: skip
    (out / "README.md").write_text("\n".join(lines) + "\n\n![DSC vs ε](dp_sweep.png)\n")
    plot(rows, out / "dp_sweep.png")
    return out


SERIES = {("patch", False): "patch level", ("patient", False): "patient level",
          ("patch", True): "patch level, public pre-training", ("patient", True): "patient level, public pre-training"}  # fmt: skip
#: Reference rows drawn as horizontal lines: (line style, colour); the colours of the series they belong to.
REFERENCES = {"real": ("--", "k"), "non-DP (σ=∞)": (":", "C0"), "non-DP (σ=∞) pretrained": (":", "C2"),
              "public only (ε=0)": ("-.", "C2")}  # fmt: skip


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """DSC vs ε per series with 95 % error bars; references as horizontal lines with their interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for i, ((unit, pre), label) in enumerate(SERIES.items()):
        pts = sorted((r["epsilon"], r["dsc_intracranial_mean"], r["dsc_intracranial_ci95"] or 0.0) for r in rows
                     if r.get("unit") == unit and r.get("pretrained") == pre and r.get("epsilon") is not None
                     and math.isfinite(r["epsilon"]) and r["epsilon"] > 0 and r.get("dsc_intracranial_mean") is not None)  # fmt: skip
        if pts:
            x, y, err = zip(*pts)
            x = [e * 1.03**i for e in x]  # a small shift per series, so that bars at the same ε do not overlap
            ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color=f"C{i}", label=label)
    for name, (style, colour) in REFERENCES.items():
        ref = next((r for r in rows if r["row"] == name and r.get("dsc_intracranial_mean") is not None), None)
        if ref:
            mean, ci = ref["dsc_intracranial_mean"], ref["dsc_intracranial_ci95"]
            ax.axhline(mean, ls=style, color=colour, label=f"{name}: {_pm(mean, ci)} (n={ref['repeats']})")
            if ci:
                ax.axhspan(mean - ci, mean + ci, color=colour, alpha=0.08)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -0.02), min(high, 1.0))  # DSC ∈ [0, 1]; a symmetric t-interval of n = 2–3 runs may pass 0
    ax.set_xscale("log")
    ax.set_xlabel("ε (RDP, at the run's δ)")
    ax.set_ylabel("test DSC (intracranial), mean ± 95 % CI")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
