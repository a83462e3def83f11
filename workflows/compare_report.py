"""Report of `tofgan compare`: Table 2 of Kossen et al. 2021 (2D) or Table 3 and A.1 of Subramaniam et al. 2022
(3D) as CSV and markdown, the ordering check, figures."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from workflows.report import markdown_table, mean_sd, plot_curves, write_csv  # noqa: E402

SECTIONS = {"real": "U-Net on real data", "real+synthetic": "Augmentation (real + synthetic)",
            "synthetic": "Anonymisation (synthetic only)"}  # fmt: skip
METRICS = ("dsc", "hd95", "bavd", "bavd_vox")  # bavd in mm; bavd_vox in voxels (the 3D paper's unit)
COLUMNS = ["training", "gan", "evaluated_on", "vessels", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
           "n_patients", "epoch", "val_dsc_patches", "checkpoint"]  # fmt: skip
GAN_LOSSES = ["train/critic_loss", "train/discriminator_loss", "train/generator_loss", "train/wasserstein",
              "train/gradient_penalty"]  # fmt: skip
PAPER_ORDER = ("DCGAN", "WGAN-GP", "WGAN-GP-SN")  # synthetic-only DSC, ascending, in Kossen et al. 2021
COHORTS3D = {"test": "PEGASUS-like", "external": "1000Plus-like"}  # Table 3's data sources
PAPER_TABLE3 = {"all": "c-SN-MP best synthetic (0.820 / 0.809), real 0.906 / 0.883",
                "intracranial": "c-SN-MP best synthetic on PEGASUS (0.841), real 0.901 / 0.880"}  # test DSC


RowKey = tuple[str, str, str, str]  # (training, gan, evaluated_on, vessels)


def shown_unets(steps: dict[str, Any], gans: list[str]) -> list[dict[str, Any]]:
    """The U-Nets of the real data and of the GANs in `gans` (a resumed folder may hold others)."""
    return [v for k, v in steps.items() if k.startswith("unet/") and v["gan"] in (None, *gans)]


def result_rows(steps: dict[str, Any], gans: list[str]) -> list[dict[str, Any]]:
    """One row per U-Net × evaluated set (val, test, external) × vessel set (all, intracranial)."""
    rows = []
    for unet in shown_unets(steps, gans):
        for split, summary in unet["summaries"].items():
            for vessels, res in summary["results"].items():
                rows.append({"training": unet["training"], "gan": unet["gan"] or "", "evaluated_on": split,
                             "vessels": vessels, **{f"{m}_{s}": res.get(f"{m}_{s}") for m in METRICS for s in ("mean", "std")},
                             "n_patients": res.get("n_patients"), "epoch": unet["epoch"],
                             "val_dsc_patches": unet["val_dsc_patches"], "checkpoint": unet["checkpoint"]})  # fmt: skip
    return rows


def index_rows(rows: list[dict[str, Any]]) -> dict[RowKey, dict[str, Any]]:
    return {(r["training"], r["gan"], r["evaluated_on"], r["vessels"]): r for r in rows}


def _cell(by_key: dict[RowKey, dict[str, Any]], key: RowKey, metric: str) -> str:
    row = by_key.get(key)
    return "–" if row is None else mean_sd(row, metric, 2 if metric == "hd95" else 3)


def table2(rows: list[dict[str, Any]], gans: list[str], vessels: str) -> str:
    """Table 2's layout: val/test DSC and 95HD per model, section rows in italics, external rows when tested."""
    columns = ["model", "val DSC", "test DSC", "val 95HD (mm)", "test 95HD (mm)"]
    lines: list[dict[str, str]] = []
    by_key = index_rows(rows)

    def add(model: str, training: str, gan: str, val: str = "val", test: str = "test") -> None:
        v, t = (training, gan, val, vessels), (training, gan, test, vessels)
        lines.append({"model": model, "val DSC": _cell(by_key, v, "dsc"), "test DSC": _cell(by_key, t, "dsc"),
                      "val 95HD (mm)": _cell(by_key, v, "hd95"), "test 95HD (mm)": _cell(by_key, t, "hd95")})

    add(f"**{SECTIONS['real']}**", "real", "")
    for training in ("real+synthetic", "synthetic"):
        lines.append({"model": f"*{SECTIONS[training]}*"})
        for gan in gans:
            add(gan, training, gan)
    if any(r["evaluated_on"] == "external" for r in rows):
        lines.append({"model": "*Evaluated on the external cohort (test patients)*"})
        add("real data", "real", "", val="none", test="external")
        for gan in gans:
            add(f"{gan} (synthetic only)", "synthetic", gan, val="none", test="external")
    return markdown_table(lines, columns)


def table3(rows: list[dict[str, Any]], gans: list[str], training: str) -> str:
    """Table 3 (training "synthetic": each GAN's synthetic data, then real) or Table A.1 ("real+synthetic": real
    data augmented with each GAN's, then real): mean ± SD over test patients of DSC and bAVD (voxels; mm where a
    summary has no voxel bAVD) on both cohorts, section A all vessels, section B intracranial vessels."""
    columns = ["data source"] + [f"{c} {m}" for c in COHORTS3D.values() for m in ("DSC", "bAVD (vox)")]
    by_key, lines = index_rows(rows), []
    for section, vessels in (("A) All vessels", "all"), ("B) Intracranial vessels", "intracranial")):
        lines.append({"data source": f"*{section}*"})
        models = [(f"{'Real + ' if training == 'real+synthetic' else ''}{g} model", training, g) for g in gans]
        for name, train, gan in [*models, ("Real", "real", "")]:
            line = {"data source": name}
            for split, cohort in COHORTS3D.items():
                row = by_key.get((train, gan, split, vessels))
                line[f"{cohort} DSC"] = _cell(by_key, (train, gan, split, vessels), "dsc")
                vox = row is not None and row.get("bavd_vox_mean") is not None
                line[f"{cohort} bAVD (vox)"] = _cell(by_key, (train, gan, split, vessels), "bavd_vox" if vox else "bavd") + (
                    "" if vox or row is None else " mm")
            lines.append(line)
    return markdown_table(lines, columns)


def ordering(rows: list[dict[str, Any]], vessels: str, split: str = "test") -> tuple[bool | None, dict]:
    """Whether synthetic-only DSC follows the paper's order (DCGAN ≤ WGAN-GP ≤ WGAN-GP-SN); None when one of
    the three is missing. Returns (holds, {gan: mean DSC} of every GAN)."""
    values = {r["gan"]: r["dsc_mean"] for r in rows if (r["training"], r["evaluated_on"], r["vessels"]) ==
              ("synthetic", split, vessels)}  # fmt: skip
    dsc = [values.get(g) for g in PAPER_ORDER]
    if any(v is None or math.isnan(v) for v in dsc):
        return None, values
    return all(a <= b for a, b in zip(dsc, dsc[1:])), values


def plot_comparison(rows: list[dict[str, Any]], vessels: str, out_png: Path) -> Path:
    """Bars of mean DSC (± SD over patients) per U-Net, one colour per evaluated set."""
    models = list(dict.fromkeys((r["training"], r["gan"]) for r in rows))
    splits = [s for s in ("val", "test", "external") if any(r["evaluated_on"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2, 3.8))
    width, by_key = 0.8 / max(len(splits), 1), index_rows(rows)
    for k, split in enumerate(splits):
        label: str | None = split  # once per evaluated set
        for i, (training, gan) in enumerate(models):
            row = by_key.get((training, gan, split, vessels))
            if row and row["dsc_mean"] is not None:
                ax.bar(i + (k - (len(splits) - 1) / 2) * width, row["dsc_mean"], width,
                       yerr=row["dsc_std"] or 0.0, color=f"C{k}", capsize=2, label=label)
                label = None
    ax.set_xticks(range(len(models)), [f"{t}\n{g}" if g else t for t, g in models], fontsize=7)
    ax.set_ylabel(f"DSC ({vessels} vessels)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_samples(gan_steps: dict[str, dict[str, Any]], out_png: Path) -> Path | None:
    """The paper's Fig. 2: each GAN's synthetic pairs (the store previews) side by side."""
    previews = {name: Path(g["store"]) / "preview.png" for name, g in gan_steps.items()}
    previews = {name: p for name, p in previews.items() if p.is_file()}
    if not previews:
        return None
    fig, axes = plt.subplots(1, len(previews), figsize=(4 * len(previews), 4.4), squeeze=False)
    for ax, (name, path) in zip(axes[0], previews.items()):
        ax.imshow(imread(path), cmap="gray")
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def slug(name: str) -> str:
    """A file name for a row name: "real+synthetic" → "real_synthetic", "DCGAN (batch-mean FM)" → "dcgan_batch-mean_fm"."""
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_")


def write_report(out: Path, steps: dict[str, Any], gans: list[str], dims: int = 2) -> Path:
    rows = result_rows(steps, gans)
    write_csv(rows, COLUMNS, out / "comparison.csv")
    vessel_sets = [v for v in ("intracranial", "all") if any(r["vessels"] == v for r in rows)]
    gan_steps = {g: steps[f"gan/{g}"] for g in gans if f"gan/{g}" in steps}
    minutes = sum(s.get("minutes", 0.0) for s in [*gan_steps.values(), *shown_unets(steps, gans)])
    if dims == 3:
        lines = report3d_lines(rows, gans, minutes)
        return _finish(out, rows, gans, gan_steps, vessel_sets, lines)
    lines = ["# GAN comparison (Kossen et al. 2021, Table 2 layout)", "",
             f"Wall time of the steps shown: {minutes:.1f} min (GAN fit + synthesis, U-Net fit + tests). "
             "Mean ± SD over patients; 95HD in mm. `val`: whole volumes of the validation patients; `test`: the test patients; the U-Net epoch was chosen on the fit-time "
             "patch DSC of the validation patients.", ""]  # fmt: skip
    for vessels in vessel_sets:
        holds, values = ordering(rows, vessels)
        order = " ≤ ".join(PAPER_ORDER)
        verdict = "n/a" if holds is None else ("holds" if holds else "does not hold")
        lines += [f"## {vessels} vessels", "", table2(rows, gans, vessels), "",
                  f"Paper ordering on synthetic-only test DSC ({order}): **{verdict}** "
                  f"({', '.join(f'{g} {values[g]:.3f}' for g in gans if values.get(g) is not None)}).", ""]  # fmt: skip
    return _finish(out, rows, gans, gan_steps, vessel_sets, lines)


def report3d_lines(rows: list[dict[str, Any]], gans: list[str], minutes: float) -> list[str]:
    """Table 3 and Table A.1 of the 3D paper, with how they were measured and the paper's values to compare."""
    lines = ["# 3D GAN comparison (Subramaniam et al. 2022, Table 3 and Table A.1 layout)", "",
             f"Wall time of the steps shown: {minutes:.1f} min (GAN fit + synthesis, U-Net fit + tests). Mean ± SD over "
             "the test patients of the PEGASUS-like cohort (the GANs' and U-Nets' cohort) and of the 1000Plus-like "
             "cohort; bAVD in voxels, as the paper. A) the whole prediction against the whole label; B) both masked "
             "with the brain mask. U-Net epochs chosen on the fit-time patch DSC of the validation patients.", "",
             "## Table 3: U-Nets trained on synthetic data only, and on real data", "", table3(rows, gans, "synthetic"),
             "", f"Paper (test DSC): all vessels {PAPER_TABLE3['all']}; intracranial {PAPER_TABLE3['intracranial']}.",
             "", "## Table A.1: real data augmented with synthetic data", "", table3(rows, gans, "real+synthetic"), ""]
    if rows and all_equals_intracranial(rows):
        lines[2] += (" Here A) equals B): the cohorts are skull-stripped (labels and predictions cut to the brain mask, "
                     "as the cpu_compare3d_* configs), so every vessel is intracranial; the paper's protocol is unstripped.")
    return lines


def all_equals_intracranial(rows: list[dict[str, Any]]) -> bool:
    """Whether every "all vessels" result equals its "intracranial" one (DSC and bAVD): true on skull-stripped data."""
    by_key = index_rows(rows)
    pairs = [(r, by_key.get((r["training"], r["gan"], r["evaluated_on"], "intracranial"))) for r in rows if r["vessels"] == "all"]
    return bool(pairs) and all(b is not None and all(a[f"{m}_mean"] == b[f"{m}_mean"] for m in ("dsc", "bavd", "bavd_vox"))
                               for a, b in pairs)  # fmt: skip


def _finish(out: Path, rows: list[dict[str, Any]], gans: list[str], gan_steps: dict[str, dict[str, Any]],
            vessel_sets: list[str], lines: list[str]) -> Path:
    """Figures and the GAN checkpoint table, shared by the 2D and 3D reports; writes README.md."""
    if vessel_sets:
        plot_comparison(rows, vessel_sets[0], out / "comparison.png")
        lines += ["![DSC per U-Net](comparison.png)", ""]
    lines += ["## GAN checkpoints", "", markdown_table(
        [{"GAN": g, "experiment": s["experiment"], "rule": s["rule"], "epoch": s["epoch"], "value": s["value"],
          "minutes": f"{s.get('minutes', float('nan')):.1f}", "synthetic store": s["store"]} for g, s in gan_steps.items()],
        ["GAN", "experiment", "rule", "epoch", "value", "minutes", "synthetic store"]), ""]  # fmt: skip
    if plot_samples(gan_steps, out / "samples.png"):
        lines += ["![synthetic pairs of each GAN](samples.png)", ""]
    for g, s in gan_steps.items():
        if Path(s["metrics_csv"]).is_file():
            png = plot_curves(s["metrics_csv"], GAN_LOSSES, out / f"gan_losses_{slug(g)}.png", g)
            lines += [f"![{g} losses]({png.name})", ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines[:12]) + f"\n\nReport: {out}/README.md", flush=True)
    return out
