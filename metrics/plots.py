"""Figures for judging synthetic data: PRD curves of several runs, 2D embeddings, label-realism histograms.

Figures are built with `matplotlib.figure.Figure` on the Agg canvas, never through pyplot's global state:
callbacks on headless SLURM nodes and parallel tests must not fight over a GUI backend or current figure.
Every function returns the Figure (loggers such as W&B take it directly); `save_figure` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metrics.label_realism import LabelRealismStats
from metrics.prd import PRDResult

_LABEL_PANELS = (
    ("radii_mm", "centreline radius (mm)"),
    ("vessel_fraction", "vessel fraction per patch"),
    ("n_components", "connected components per patch"),
    ("largest_share", "largest component share"),
    ("tissue_to_vessel", "mean outside / mean inside label"),
    ("contrast", "mean inside − mean outside"),
)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_prd_curves(
    curves: Mapping[str, PRDResult | tuple[np.ndarray, np.ndarray]], title: str = "PRD (evaluated = synthetic)"
) -> Figure:
    """All runs' precision–recall curves in one panel (recall on x, as Sajjadi et al.'s plots)."""
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        if isinstance(curve, PRDResult):
            p, r = curve.precision, curve.recall
            label = f"{name} (AUC {curve.auc:.3f}, F8 {curve.f_beta:.2f}, F1/8 {curve.f_beta_inv:.2f})"
        else:
            p, r = curve
            label = name
        ax.plot(r, p, label=label, linewidth=1.5)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title, aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def plot_embedding(
    coords: np.ndarray, groups: Sequence[str] | np.ndarray, title: str = "t-SNE", point_size: float = 6.0
) -> Figure:
    """Scatter of a joint 2D embedding, one colour per set (order of first appearance)."""
    coords, groups = np.asarray(coords), np.asarray(groups)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != groups.size:
        raise ValueError(f"plot_embedding: need (N, 2) coords and N groups, got {coords.shape} and {groups.size}")
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name in dict.fromkeys(groups.tolist()):
        sel = groups == name
        ax.scatter(coords[sel, 0], coords[sel, 1], s=point_size, alpha=0.6, label=f"{name} ({sel.sum()})")
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(markerscale=2, fontsize="small")
    return fig


def plot_label_realism(stats: Mapping[str, LabelRealismStats], bins: int = 30) -> Figure:
    """Histograms (density) of each label-realism measure, sets overlaid on shared bins."""
    fig = _figure(13.0, 7.0)
    axes = fig.subplots(2, 3).ravel()
    for ax, (attr, label) in zip(axes, _LABEL_PANELS):
        data = {name: np.asarray(getattr(s, attr), np.float64) for name, s in stats.items()}
        data = {name: v[np.isfinite(v)] for name, v in data.items()}
        pooled = np.concatenate([v for v in data.values()] + [np.zeros(0)])
        if pooled.size == 0:
            ax.set_title(f"{label}: no data")
            continue
        lo, hi = float(pooled.min()), float(pooled.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for name, v in data.items():
            if v.size:
                ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{name} (n={v.size})")
        ax.set(xlabel=label, ylabel="density")
    axes[0].legend(fontsize="small")
    return fig
