"""Report of `tofgan audit`: audit.json, audit.md, roc.png (log-log, with the DP region), nearest_neighbours.png,
roc_curves.npz and a W&B run (job_type "audit"). Every file is written to a temporary name and renamed."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from metrics.membership import dp_roc_bound
from metrics.plots import _figure
from workflows.report import markdown_table

LEVELS = ("patch", "patient")


def leakage_summary(results: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Worst case over attacks, per level: the highest AUC and the highest lower CI bound, next to the reference
    run's highest AUC (what chance looks like here).

    `max_auc_ci_lower` (what `tofgan export` compares with its threshold) is the patch-level one: its
    patient-cluster bootstrap counts the patients, while a percentile bootstrap over a handful of non-member
    patients (4 in the CPU cohort, 14 in PEGASUS) is too unstable to decide on; the patient level stays reported.
    """
    out: dict[str, Any] = {}
    for level in LEVELS:
        aucs = {k: v[level]["auc"] for k, v in results.items() if not math.isnan(v[level]["auc"])}
        lows = {k: v[level]["auc_ci95"][0] for k, v in results.items() if not math.isnan(v[level]["auc_ci95"][0])}
        ref = [v[level]["auc"] for v in reference.values() if not math.isnan(v[level]["auc"])]
        best = max(aucs, key=aucs.get) if aucs else None
        out[level] = {"max_auc": aucs.get(best, float("nan")) if best else float("nan"), "max_auc_attack": best,
                      "max_auc_ci_lower": max(lows.values()) if lows else float("nan"),
                      "reference_run_max_auc": max(ref) if ref else float("nan")}
    out["max_auc_ci_lower"] = out["patch"]["max_auc_ci_lower"]
    out["decision_basis"] = "highest lower 95 % CI bound (patient-cluster bootstrap) of a patch-level attack AUC"
    return out


# ----------------------------------------------------------------------------- markdown
def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(ci: list[float]) -> str:
    return f"[{_f(ci[0], 2)}, {_f(ci[1], 2)}]"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        pa, pt = r["patch"], r["patient"]
        rows.append([name, _f(pa["auc"]), _ci(pa["auc_ci95"]), _ci(pa.get("auc_ci95_naive", [math.nan] * 2)),
                     _f(pa["tpr_at_fpr_0.01"]), _f(pa["tpr_at_fpr_0.001"]), _f(pt["auc"]), _ci(pt["auc_ci95"]),
                     _f(pt["tpr_at_fpr_0"]), _f(pt["tpr_at_fpr_0.01"])])
    return rows


COLUMNS = ["attack", "patch AUC", "95 % CI (patient-cluster)", "naive CI", "TPR@1 % FPR", "TPR@0.1 % FPR",
           "patient AUC", "95 % CI", "patient TPR@FPR=0", "patient TPR@1 % FPR"]


def _md_table(results: dict[str, Any]) -> list[str]:
    return markdown_table([dict(zip(COLUMNS, r)) for r in table_rows(results)], COLUMNS).split("\n")


def markdown(report: dict[str, Any]) -> str:
    c, priv, leak = report["counts"], report["privacy"], report["leakage"]
    lines = [
        f"# Membership-inference audit of `{report['gan_class']}` (sha256 {report['checkpoint_sha256'][:12]}…)", "",
        f"- members: {c['members']['patients']} {report['roles']['members']}, {c['members']['patches']} patches",
        f"- non-members: {c['nonmembers']['patients']} {report['roles']['nonmembers']}, {c['nonmembers']['patches']} patches",
        f"- reference: {c['reference']['patients']} {report['roles']['reference']}, {c['reference']['patches']} patches",
        f"- synthetic: {report['n_synthetic']} pairs ({report['synthetic_source']}); feature spaces: "
        f"{', '.join(report['feature_spaces'])}; patient score = {report['patient_aggregation']}",
        f"- CIs: {report['ci']}. TPR at an FPR below 1/(non-members) is n/a (not resolvable).",
        "- privacy: " + (f"(ε = {_f(priv.get('epsilon'), 2)}, δ = {priv.get('delta')}) per {priv.get('unit', '?')}, "
                         f"accountant {priv.get('accountant', '?')}; the ROC plot draws the region every attack must respect"
                         if priv else "no formal privacy guarantee (not a DP generator)"), "",
        "## Attacks on the synthetic set", "", *_md_table(report["results"]), "",
        f"## Reference run (chance level): {report['reference_run']['kind']}", "",
        *_md_table(report["reference_run"]["results"]), "",
        "## Worst case", "",
        *[f"- {lv}: max AUC {_f(leak[lv]['max_auc'])} ({leak[lv]['max_auc_attack']}), highest lower CI bound "
          f"{_f(leak[lv]['max_auc_ci_lower'])}; reference run max AUC {_f(leak[lv]['reference_run_max_auc'])}" for lv in LEVELS],
    ]
    if "canary_audit" in report:
        ca = report["canary_audit"]
        lines += ["", "## One-run DP audit (canary patches)", "",
                  f"ε lower bound {_f(ca['epsilon_lower_bound'], 2)} (confidence {ca['confidence']}) vs claimed "
                  f"{_f(ca['claimed_epsilon'], 2)}: {'VIOLATION' if ca['violation'] else 'consistent'}; "
                  f"{ca['correct']}/{ca['guesses']} guesses right, canary AUC {_f(ca['canary_auc'])}"]
    lines += ["", "![ROC](roc.png)", "", "![nearest neighbours](nearest_neighbours.png)", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def plot_roc(report: dict[str, Any], curves: dict[str, Any], reference_curves: dict[str, Any]) -> Figure:
    fig = _figure(11, 4.8)
    priv = report["privacy"] or {}
    for ax, level in zip(fig.subplots(1, 2), LEVELS):
        ax.set_prop_cycle(color=list(colormaps["tab20"].colors))  # up to ~15 attacks: tab10 would repeat colours
        n_out = report["counts"]["nonmembers"]["patches" if level == "patch" else "patients"]
        lo = min(1e-3, 0.5 / max(n_out, 1))
        grid = np.logspace(math.log10(lo), 0, 200)
        ax.plot(grid, grid, color="0.6", lw=0.8, label="chance")
        for name, curve in curves.items():
            fpr, tpr = curve[level]
            ax.step(np.maximum(fpr, lo), np.maximum(tpr, lo), where="post", lw=1.2,
                    label=f"{name} ({report['results'][name][level]['auc']:.2f})")
        if reference_curves:
            name = max(reference_curves, key=lambda k: report["reference_run"]["results"][k][level]["auc"])
            fpr, tpr = reference_curves[name][level]
            ax.step(np.maximum(fpr, lo), np.maximum(tpr, lo), where="post", color="0.3", ls="--", lw=1,
                    label=f"reference run, best ({name})")
        # a patch-level guarantee bounds tests of one patch's membership, not of a patient's (group privacy is far
        # weaker); a patient-level one bounds both panels (every patch test is a test of its patient's inclusion)
        bound_applies = priv.get("unit") == "patient" or level == "patch"
        if bound_applies and priv.get("epsilon") is not None and math.isfinite(float(priv["epsilon"])):
            ax.plot(grid, np.maximum(dp_roc_bound(grid, float(priv["epsilon"]), float(priv.get("delta", 0))), lo),
                    color="k", lw=1.5, label=f"(ε={float(priv['epsilon']):.2f}, δ={priv.get('delta')}) bound, per "
                                              f"{priv.get('unit', '?')}")
        ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(lo, 1.05), xlabel="false positive rate",
               ylabel="true positive rate", title=f"{level} level ({n_out} non-member {level}{'es' if level == 'patch' else 's'})")
        ax.legend(fontsize=6, loc="lower right")
    return fig


def plot_nearest(sets: dict[str, Any], pixels: dict[str, torch.Tensor], k: int = 8) -> Figure:
    """The k synthetic pairs closest to a training patch, beside that patch and the nearest held-out patch."""
    from metrics.memorisation import memorisation_report, nearest_neighbours

    rep = memorisation_report(pixels["synthetic"], pixels["members"], pixels["nonmembers"], normalise="none",
                              k=k, balance=False)
    top = np.argsort(rep["d_train"], kind="stable")[:k]
    _, held = nearest_neighbours(pixels["synthetic"][torch.from_numpy(top)], pixels["nonmembers"])
    fig = _figure(9, 1.5 * len(top) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(top), 6))
    triples = [("synthetic", top), ("members", rep["nearest_train_index"][top]), ("nonmembers", held)]
    titles = ("synthetic", "nearest training patch", "nearest held-out patch")
    for row, i in enumerate(top):
        for col, (name, idx) in enumerate(triples):
            img, lab = sets[name]["images"][idx[row], 0], sets[name]["labels"][idx[row], 0]
            if img.ndim == 3:  # 3D: middle slice
                img, lab = img[..., img.shape[-1] // 2], lab[..., lab.shape[-1] // 2]
            axes[row, 2 * col].imshow(img.numpy(), cmap="gray")
            axes[row, 2 * col + 1].imshow(lab.numpy(), cmap="gray", vmin=0, vmax=1)
            if row == 0:
                axes[row, 2 * col].set_title(titles[col], fontsize=7, loc="left")
        axes[row, 0].set_ylabel(f"d_train={rep['d_train'][i]:.2f}\nd_held={rep['d_heldout'][i]:.2f}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"closest synthetic pairs to a training patch (RMS distance in pixel features; {len(pixels['members'])}"
                 f" training vs {len(pixels['nonmembers'])} held-out patches searched: more patches, closer by chance)",
                 fontsize=7)
    return fig


# ----------------------------------------------------------------------------- writing
def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _split_curves(results: dict[str, Any]) -> dict[str, Any]:
    return {name: r.pop("roc") for name, r in results.items() if "roc" in r}


def write_outputs(report: dict[str, Any], sets: dict[str, Any], pixels: dict[str, torch.Tensor], out: Path,
                  wandb: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    curves, ref_curves = _split_curves(report["results"]), _split_curves(report["reference_run"]["results"])
    figures = {"roc": plot_roc(report, curves, ref_curves), "nearest_neighbours": plot_nearest(sets, pixels)}
    for name, fig in figures.items():
        _atomic(out / f"{name}.png", lambda p, f=fig: f.savefig(p, dpi=130, format="png"))
    arrays = {f"{name.replace('/', '__')}__{lv}__{axis}": curves[name][lv][i]
              for name in curves for lv in LEVELS for i, axis in enumerate(("fpr", "tpr"))}
    _atomic(out / "roc_curves.npz", lambda p: np.savez_compressed(open(p, "wb"), **arrays))
    _atomic(out / "audit.md", lambda p: p.write_text(markdown(report)))
    from workflows.export import jsonable

    _atomic(out / "audit.json", lambda p: p.write_text(json.dumps(jsonable(report), indent=2)))  # last: marks done
    if wandb:
        log_wandb(report, figures, out)


def log_wandb(report: dict[str, Any], figures: dict[str, Figure], out: Path) -> None:
    """One W&B run per audit (offline unless logged in, as the suite's other runs)."""
    import wandb as wb

    from callbacks.wandb_run import privacy_tags, start_tool_run

    run = start_tool_run("audit", out, f"audit-{report['checkpoint_sha256'][:8]}",
                         {k: report[k] for k in ("checkpoint_sha256", "gan_class", "privacy", "counts", "n_synthetic", "seed")},
                         tags=[f"model:{str(report['gan_class']).rsplit('.', 1)[-1]}", *privacy_tags(report["privacy"])])
    rows = table_rows(report["results"])
    run.log({"audit/attacks": wb.Table(columns=COLUMNS, data=rows),
             **{f"audit/{k}": wb.Image(f) for k, f in figures.items()}})
    run.summary.update({f"leakage/{lv}/{k}": v for lv in LEVELS for k, v in report["leakage"][lv].items()})
    run.finish()
