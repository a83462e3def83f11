"""The `tofgan test` report on a GAN checkpoint: FID, PRD, diversity, label realism and memorisation, as
JSON (every number, with the extractor's identity and the sample counts) and markdown (tables + figures).

Run it as `tofgan test --config <GAN experiment configs> --config configs/callbacks/gan_evaluation.yaml
--ckpt_path <gan.ckpt>`: `GANEvaluationCallback` collects the real train and held-out patches from the GAN
datamodule's test loaders, generates the synthetic set and calls `test_report` + `write_report` here.

Reference set: the real training patches (as the papers' FID: real = training data); "real vs real" figures
(held-out patients vs training patients) are given beside the scores as the level a perfect generator reaches.
Memorisation: a generator that copies its training patients sits closer to them than to held-out patients of
the same cohort (FID ratio and nearest-neighbour distance ratio < 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from callbacks.gan_evaluation_scores import EvalConfig, RealReference, Timer, embedding_figure, score_synthetic
from metrics.label_realism import compare_label_realism
from metrics.memorisation import fid_train_vs_heldout, memorisation_report
from metrics.plots import plot_label_realism, plot_prd_curves, save_figure

REPORT_JSON, REPORT_MD = "gan_evaluation.json", "gan_evaluation.md"


def _nn_summary(mem: dict[str, Any]) -> dict[str, Any]:
    d_tr, d_ho = np.asarray(mem["d_train"]), np.asarray(mem["d_heldout"])
    return {"median_d_train": float(np.median(d_tr)), "median_d_heldout": float(np.median(d_ho)),
            "p05_d_train": float(np.percentile(d_tr, 5)), "p05_d_heldout": float(np.percentile(d_ho, 5)),
            **{k: mem[k] for k in ("median_ratio", "fraction_closer_to_train", "n_exact_copies", "n_train_used",
                                   "n_heldout_used", "space")}}


def _memorisation(images: torch.Tensor, syn_features: torch.Tensor | None, train: RealReference,
                  heldout: RealReference, seed: int) -> dict[str, Any]:
    mem: dict[str, Any] = {"nearest_neighbours": _nn_summary(
        memorisation_report(images, train.images, heldout.images, seed=seed))}
    if syn_features is not None and train.features is not None and heldout.features is not None:
        mem.update(fid_train_vs_heldout(syn_features, train.features, heldout.features))
        assert train.fid is not None
        mem["fid_real_heldout_vs_train"] = train.fid(heldout.features)["fid"]
    return mem


def test_report(images: torch.Tensor, labels: torch.Tensor, train: RealReference, heldout: RealReference | None,
                extractor: nn.Module | None, cfg: EvalConfig, timer: Timer) -> tuple[dict[str, Any], dict[str, Figure]]:
    """Scores of synthetic pairs against `train`, memorisation against `heldout`; returns report and figures."""
    scores = score_synthetic(images, labels, train, extractor, cfg, timer)
    report: dict[str, Any] = {"reference": f"{train.name} (evaluated = synthetic)"}
    figs: dict[str, Figure] = {}
    if scores.fid is not None:
        report["fid"] = dict(scores.fid, reference=train.name)
    if scores.prd is not None:
        report["prd"] = dict(scores.prd.summary(), reference=train.name)
        figs["prd"] = plot_prd_curves({f"synthetic vs {train.name}": scores.prd})
    report["diversity"] = scores.diversity
    label: dict[str, Any] = {"spacing_mm": list(cfg.spacing) if cfg.spacing else None,
                             "summary": {"synthetic": scores.label_stats.summary(), train.name: train.label_stats.summary()},
                             "distances": {"synthetic_vs_train": scores.label_distances}}
    sets = {"synthetic": scores.label_stats, train.name: train.label_stats}
    feature_sets = {train.name: train.features, "synthetic": scores.features}
    if heldout is not None:
        label["summary"][heldout.name] = heldout.label_stats.summary()
        label["distances"]["heldout_vs_train"] = compare_label_realism(heldout.label_stats, train.label_stats)
        sets[heldout.name] = heldout.label_stats
        feature_sets[heldout.name] = heldout.features
        with timer.stage("memorisation"):
            report["memorisation"] = _memorisation(images, scores.features, train, heldout, cfg.seed)
    report["label_realism"] = label
    figs["label_realism"] = plot_label_realism(sets)
    if scores.features is not None:
        with timer.stage("embedding"):
            fig = embedding_figure({k: v for k, v in feature_sets.items() if v is not None}, cfg,
                                   "real train, real held-out, synthetic")
        if fig is not None:
            figs["embedding"] = fig
    scalars = scores.scalars()
    mem = report.get("memorisation")
    if mem is not None:
        scalars.update({k: float(mem[k]) for k in ("fid_train", "fid_heldout", "fid_ratio") if k in mem})
        nn_ = mem["nearest_neighbours"]
        scalars.update(mem_median_ratio=nn_["median_ratio"], mem_fraction_closer_to_train=nn_["fraction_closer_to_train"],
                       mem_n_exact_copies=float(nn_["n_exact_copies"]))
    report["scalars"] = scalars
    return report, figs


def jsonable(value: Any) -> Any:
    """NaN/inf → None (JSON has none), numpy/torch scalars → Python, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        value = value.tolist() if getattr(value, "ndim", 0) else value.item()
        return jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: dict[str, dict[str, Any]], columns: list[str]) -> list[str]:
    out = ["| measure | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    keys = list(dict.fromkeys(k for col in columns for k in rows.get(col, {})))
    out += [f"| {k} | " + " | ".join(_fmt(rows.get(c, {}).get(k)) for c in columns) + " |" for k in keys]
    return out


def report_markdown(report: dict[str, Any]) -> str:
    meta, figs = report.get("meta", {}), report.get("figures", {})
    lines = ["# GAN evaluation", ""]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in meta.items()] + [f"- **reference set**: {report['reference']}", ""]
    lines += ["## FID", ""]
    if "fid" in report:
        f = report["fid"]
        lines += [f"FID = **{f['fid']:.4g}** ({f['n_fake']} synthetic vs {f['n_real']} real)", "",
                  f"- extractor: `{f['extractor']}`, weights sha256 `{f['weights_sha256']}`",
                  f"- input mapping: {f['input_mapping']}", ""]
    else:
        lines += ["Skipped: no feature extractor configured (FID, PRD and the embedding need one).", ""]
    if "prd" in report:
        p = report["prd"]
        lines += ["## PRD (evaluated = synthetic, reference = real)", "",
                  f"AUC **{p['auc']:.4f}**, F8 (recall) **{p['f_beta']:.4f}**, F1/8 (precision) **{p['f_beta_inv']:.4f}**"
                  f" — {p['num_clusters']} clusters, {p['num_runs']} runs, {p['n_eval']} vs {p['n_ref']} samples", ""]
        lines += [f"![PRD]({figs['prd']})", ""] if "prd" in figs else []
    d = report["diversity"]
    lines += ["## Diversity (mean pairwise SSIM; higher = less diverse)", "",
              f"synthetic {_fmt(d.get('ssim_synthetic_mean'))} ± {_fmt(d.get('ssim_synthetic_sd'))}, real "
              f"{_fmt(d.get('ssim_real_mean'))} ± {_fmt(d.get('ssim_real_sd'))} ({d['n_pairs']} pairs each)", ""]
    lab = report["label_realism"]
    lines += ["## Label realism", "", f"Spacing (mm): {lab['spacing_mm'] or 'voxel units'}", ""]
    lines += _table(lab["summary"], list(lab["summary"])) + [""]
    lines += ["Distances (Wasserstein-1 / |difference of means|):", ""]
    lines += _table(lab["distances"], list(lab["distances"])) + [""]
    lines += [f"![label realism]({figs['label_realism']})", ""] if "label_realism" in figs else []
    if "memorisation" in report:
        m, nn_ = report["memorisation"], report["memorisation"]["nearest_neighbours"]
        lines += ["## Memorisation (synthetic vs training patients vs held-out patients)", ""]
        if "fid_train" in m:
            lines += [f"- FID(synthetic, train) {_fmt(m['fid_train'])}, FID(synthetic, held-out) {_fmt(m['fid_heldout'])},"
                      f" ratio {_fmt(m['fid_ratio'])}; real held-out vs train {_fmt(m['fid_real_heldout_vs_train'])}"]
        lines += [f"- nearest neighbour ({nn_['space']}): median distance to train {_fmt(nn_['median_d_train'])}, "
                  f"to held-out {_fmt(nn_['median_d_heldout'])}; median ratio {_fmt(nn_['median_ratio'])}; "
                  f"closer to train for {_fmt(nn_['fraction_closer_to_train'])} of samples; exact copies "
                  f"{nn_['n_exact_copies']} ({nn_['n_train_used']} train / {nn_['n_heldout_used']} held-out patches)", ""]
    lines += [f"![embedding]({figs['embedding']})", ""] if "embedding" in figs else []
    lines += ["## Cost (seconds)", ""] + [f"- {k}: {v:.2f}" for k, v in report.get("seconds", {}).items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], figures: dict[str, Figure], out_dir: str | Path) -> tuple[Path, Path]:
    """PNG per figure, `gan_evaluation.json` and `gan_evaluation.md` in out_dir; returns (json, markdown)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report, figures={name: save_figure(fig, out / f"{name}.png").name for name, fig in figures.items()})
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    json_path.write_text(json.dumps(jsonable(report), indent=2))
    md_path.write_text(report_markdown(report))
    return json_path, md_path
