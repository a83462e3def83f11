"""Report of `tofgan perfusion-compare`: comparison.csv, README.md (thesis-style tables) and one figure per cohort."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metrics.perfusion import METRICS  # noqa: E402
from workflows.report import markdown_table, write_csv  # noqa: E402

PIPELINE = "oSVD pipeline"
COMPARISONS = {"norm": "prediction vs pipeline map, [-1, 1] (data range 2; the thesis' units)",
               "pred_vs_pipeline": "prediction vs pipeline map, physical units",
               "pred_vs_truth": "prediction vs simulator truth, physical units",
               "pipeline_vs_truth": "oSVD pipeline vs simulator truth, physical units"}  # fmt: skip
COLUMNS = ["cohort", "map", "architecture", "comparison", "region",
           *[f"{m}_{s}" for m in METRICS for s in ("mean", "sd")], "n_patients", "minutes", "checkpoint"]  # fmt: skip
UNITS = {"cbf": "ml/100 g/min", "cbv": "ml/100 g", "mtt": "s", "tmax": "s", "ttp": "s"}
COHORTS = {"acute": "acute-like (Heidelberg-like) cohort", "steno": "steno-occlusive (PEGASUS-like) cohort, fine-tuned"}


def table_rows(steps: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (cohort, map, architecture, comparison, region); the pipeline's rows once per cohort × map."""
    rows, seen_pipeline = [], set()
    for key, step in steps.items():
        cohort, target_map, arch = key.split("-", 2)
        summary = step["summary"]
        for comparison in COMPARISONS:
            name = PIPELINE if comparison == "pipeline_vs_truth" else arch
            if comparison == "pipeline_vs_truth" and (cohort, target_map) in seen_pipeline:
                continue
            for region in ("all", "brain"):
                prefix = f"{comparison}/{region}/"
                if prefix + "n_patients" not in summary:
                    continue
                rows.append({"cohort": cohort, "map": target_map, "architecture": name, "comparison": comparison,
                             "region": region, "n_patients": int(summary[prefix + "n_patients"]),
                             **{f"{m}_{s}": summary.get(f"{prefix}{m}_{s}") for m in METRICS for s in ("mean", "sd")},
                             "minutes": None if name == PIPELINE else round(step["minutes"], 2),
                             "checkpoint": "" if name == PIPELINE else step["checkpoint"]})  # fmt: skip
            if comparison == "pipeline_vs_truth":
                seen_pipeline.add((cohort, target_map))
    return rows


def _fmt(row: dict[str, Any] | None, metric: str, digits: int) -> str:
    if row is None or row.get(f"{metric}_mean") is None or math.isnan(row[f"{metric}_mean"]):
        return "–"
    mean, sd = row[f"{metric}_mean"], row.get(f"{metric}_sd")
    return f"{mean:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def cohort_tables(rows: list[dict[str, Any]], cohort: str, maps: list[str], archs: list[str]) -> str:
    """Thesis view (SSIM / MAE in [-1, 1] vs the pipeline map) and truth view (physical units, brain mask)."""
    index = {(r["map"], r["architecture"], r["comparison"], r["region"]): r for r in rows if r["cohort"] == cohort}
    thesis, truth = [], []
    for m in maps:
        thesis.append({"map": m, **{f"SSIM {a}": _fmt(index.get((m, a, "norm", "all")), "ssim", 3) for a in archs},
                       **{f"MAE {a}": _fmt(index.get((m, a, "norm", "all")), "mae", 3) for a in archs}})  # fmt: skip
        cells = {"map": f"{m} ({UNITS[m]})"}
        for name, comp in ((PIPELINE, "pipeline_vs_truth"), *((a, "pred_vs_truth") for a in archs)):
            cells[f"MAE {name}"] = _fmt(index.get((m, name, comp, "brain")), "mae", 2)
        for name, comp in ((PIPELINE, "pipeline_vs_truth"), *((a, "pred_vs_truth") for a in archs)):
            cells[f"SSIM {name}"] = _fmt(index.get((m, name, comp, "brain")), "ssim", 3)
        truth.append(cells)
    return "\n".join([
        f"### {COHORTS[cohort]}", "",
        "Against the pipeline map the networks learned (whole slice, [-1, 1], data range 2 — the thesis' metric):", "",
        markdown_table(thesis, list(thesis[0])), "",
        "Against the simulator's truth (brain mask, physical units, data range = the target's training range):", "",
        markdown_table(truth, list(truth[0])), ""])  # fmt: skip


def size_table(steps: dict[str, Any]) -> str:
    rows = [{"row": k, "G params": f"{s['generator_parameters']:,}", "D params": f"{s['discriminator_parameters']:,}",
             "train slices": s["train_slices"], "patients train/val/test": "/".join(str(s["splits"][x]) for x in ("train", "val", "test")),
             "epochs": s["epochs"], "steps": s["steps"], "minutes": f"{s['minutes']:.2f}"} for k, s in steps.items()]  # fmt: skip
    return markdown_table(rows, list(rows[0])) if rows else ""


def load_example(report_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """example.npz → {patient: {key: array}}."""
    path = Path(report_dir) / "example.npz"
    if not path.is_file():
        return {}
    data = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        patient, name = key.rsplit("/", 1)
        out.setdefault(patient, {})[name] = data[key]
    return out


def plot_cohort(steps: dict[str, Any], cohort: str, maps: list[str], archs: list[str], out_png: Path) -> Path | None:
    """Rows = maps; columns: two input frames, target (pipeline), each prediction, truth, |prediction − target|."""
    panels = []
    for m in maps:
        examples = {a: load_example(steps[f"{cohort}-{m}-{a}"]["report_dir"]) for a in archs if f"{cohort}-{m}-{a}" in steps}
        common = sorted(set.intersection(*(set(e) for e in examples.values()))) if examples else []
        if common:
            panels.append((m, {a: e[common[0]] for a, e in examples.items()}, common[0]))
    if not panels:
        return None
    n_cols = 2 + 1 + len(archs) + 1 + len(archs)
    fig, axes = plt.subplots(len(panels), n_cols, figsize=(1.9 * n_cols, 2.0 * len(panels)), squeeze=False)
    for r, (m, ex, patient) in enumerate(panels):
        first = ex[archs[0]] if archs[0] in ex else next(iter(ex.values()))
        target, mask = first["pipeline"], first["mask"].astype(bool)
        lo, hi = np.percentile(target[mask], [1, 99]) if mask.any() else (target.min(), target.max())
        frames, idx = first["frames"], first["frame_index"]
        f_lo, f_hi = float(frames[0].min()), float(frames[0].max())  # one grey scale: the bolus dip shows
        shown = [(frames[0], f"frame {int(idx[0])} (baseline)", "gray", f_lo, f_hi),
                 (frames[1], f"frame {int(idx[1])} (bolus peak)", "gray", f_lo, f_hi),
                 (target, f"{m} pipeline (target)", "viridis", lo, hi),
                 *[(ex[a]["pred"], a, "viridis", lo, hi) for a in archs if a in ex],
                 (first["truth"], f"{m} truth", "viridis", lo, hi),
                 *[(np.abs(ex[a]["pred"] - target) * mask, f"|{a} − target|", "magma", 0, (hi - lo) / 2) for a in archs if a in ex]]  # fmt: skip
        for c, (img, title, cmap, vmin, vmax) in enumerate(shown):
            ax = axes[r, c]
            ax.imshow(np.rot90(img), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        axes[r, 0].text(-0.1, 0.5, f"{m}\n{patient}\nslice {int(first['slice'])}", transform=axes[r, 0].transAxes,
                        fontsize=7, ha="right", va="center")  # fmt: skip
    fig.suptitle(f"{COHORTS[cohort]}: input frames, pipeline target, predictions, truth, errors "
                 f"(maps share each row's scale, error scale 0…half the range)", fontsize=8)  # fmt: skip
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def write_report(out: Path, steps: dict[str, Any], maps: list[str], archs: list[str], cohorts: list[str]) -> Path:
    """comparison.csv, README.md and figure_<cohort>.png in `out`; returns `out`."""
    steps = {k: v for k, v in steps.items() if k.split("-", 2)[0] in cohorts and k.split("-", 2)[1] in maps
             and k.split("-", 2)[2] in archs}  # fmt: skip
    rows = table_rows(steps)
    write_csv(rows, COLUMNS, out / "comparison.csv")
    lines = ["# Perfusion maps: pix2pix vs temp-pix2pix (thesis ch. 7, simulated cohorts)", "",
             "Networks learn the oSVD pipeline's maps (the thesis learned software maps); the simulator's truth is "
             "kept to measure both the networks and the pipeline. Per slice, then mean over a patient's slices, then "
             "mean ± SD over test patients. " + "; ".join(f"`{k}`: {v}" for k, v in COMPARISONS.items()) + ".", ""]  # fmt: skip
    for cohort in cohorts:
        if any(r["cohort"] == cohort for r in rows):
            lines.append(cohort_tables(rows, cohort, maps, archs))
            png = plot_cohort(steps, cohort, maps, archs, out / f"figure_{cohort}.png")
            if png is not None:
                lines += [f"![{cohort}]({png.name})", ""]
    total = sum(s["minutes"] for s in steps.values())
    lines += ["### Sizes and wall time", "", size_table(steps), "", f"Total: {total:.1f} min of fit + test.", ""]
    tmp = out / ".README.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "README.md")
    return out
