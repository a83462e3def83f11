"""What `GANEvaluationCallback` collects and computes at each evaluation (SPEC §5); shared by validation and
`tofgan test`.

`PatchReservoir` keeps a seeded uniform subset of the real batches a loop streams past; `gather_patches`
unites the ranks' subsets under DDP.

`RealReference` holds what never changes between evaluations of one real set (its patches, features, Fréchet
statistics and label measures) so that each evaluation pays only for the synthetic side. `score_synthetic`
computes FID (extractor identity and sample counts attached), PRD (evaluated = synthetic, reference = real),
pairwise SSIM (synthetic and real reference) and label-realism distances, timing every stage.
`workflows.evaluate_gan` adds the memorisation checks and writes the test report (JSON + markdown).

Cost on the CPU (2 cores, 1000 synthetic vs 1000 real 48×48 patches, half-U-Net encoder): generation and
features take seconds; PRD costs runs × n_init k-means fits of 2000 points (10 × 10 ≈ 20–50 s, 3 × 2 ≈ 2 s);
exact t-SNE is O(N²) per iteration (600 points ≈ 20 s, 1500 ≈ 2 min); SSIM ≈ 2 s per 500 pairs; label
realism ≈ 0.5 s per 1000 patches. On a GPU, features, k-means and t-SNE run on the module's device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from torch import nn

from metrics.diversity import diversity_report
from metrics.fid import FrechetDistance
from metrics.label_realism import LabelRealismStats, compare_label_realism, label_realism_stats
from metrics.memorisation import embed_2d
from metrics.plots import plot_embedding, plot_prd_curves
from metrics.prd import PRDResult, prd_from_embeddings

LABEL_KEYS = ("w1_radius_mm", "w1_vessel_fraction", "w1_n_components", "w1_largest_share", "w1_speck_share",
              "w1_tissue_to_vessel", "w1_contrast", "absdiff_empty_fraction")


class PatchReservoir:
    """Seeded uniform subset (≤ capacity) of a stream of batches (reservoir sampling, algorithm R). Evaluation
    loaders are not shuffled, so "the first N patches" would be the first patients only."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.seen = int(capacity), 0
        self.rng = np.random.default_rng(seed)
        self.images = self.labels = torch.empty(0)

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.detach().float().cpu(), (labels.detach() > 0.5).to(torch.uint8).cpu()
        if self.seen == 0:
            self.images = torch.empty((self.capacity, *images.shape[1:]), dtype=torch.float32)
            self.labels = torch.empty((self.capacity, *labels.shape[1:]), dtype=torch.uint8)
        for k in range(len(images)):
            slot = self.seen if self.seen < self.capacity else int(self.rng.integers(0, self.seen + 1))
            if slot < self.capacity:
                self.images[slot], self.labels[slot] = images[k], labels[k]
            self.seen += 1

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(self.seen, self.capacity)
        return self.images[:n], self.labels[:n]


def gather_patches(reservoir: PatchReservoir, capacity: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's reservoir, concatenated (collective under DDP; all ranks get the result)."""
    images, labels = reservoir.tensors()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (images, labels))
        parts = [p for p in parts if len(p[0])] or [parts[0]]  # a rank without batches sends empty tensors
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if len(images) > capacity:
            keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(images), capacity, replace=False)))
            images, labels = images[keep], labels[keep]
    return images, labels


@dataclass
class EvalConfig:
    """Settings of one evaluation; PRD defaults are the reference protocol (20 clusters, 10 runs, 10 inits)."""

    prd_num_clusters: int = 20
    prd_num_runs: int = 10
    prd_n_init: int = 10
    ssim_pairs: int = 500
    embedding: Literal["tsne", "pca", "none"] = "tsne"
    embedding_max_per_set: int = 300
    spacing: tuple[float, ...] | None = None
    batch_size: int = 256
    seed: int = 0
    progress: bool = False


class Timer:
    """Seconds per stage, reported with every evaluation (the cost is part of the result)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def extractor_device(extractor: nn.Module) -> torch.device:
    param = next(iter(extractor.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, F) float32 CPU features, batched on the extractor's device."""
    device = extractor_device(extractor)
    out = [extractor(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


class CachedRealFID:
    """Fréchet distance to one real feature set whose statistics are accumulated once (the torchmetrics
    metric keeps real sums across `reset()`); fed with features so the extractor runs once per image."""

    def __init__(self, real_features: torch.Tensor, extractor: nn.Module) -> None:
        self.metric = FrechetDistance(num_features=real_features.shape[1], reset_real_features=False,
                                      sync_on_compute=False)  # computed on one rank: never a collective
        self.metric.update(real_features, real=True)
        self.identity = {"extractor": getattr(extractor, "name", type(extractor).__name__),
                         "weights_sha256": getattr(extractor, "weights_sha256", ""),
                         "input_mapping": getattr(extractor, "input_mapping", "")}

    def __call__(self, features: torch.Tensor) -> dict[str, Any]:
        self.metric.reset()
        self.metric.update(features, real=False)
        return {**self.metric.result(), **self.identity}


@dataclass
class RealReference:
    """A real patch set prepared once: images [-1, 1], labels uint8, features, FID statistics, label measures."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    label_stats: LabelRealismStats
    features: torch.Tensor | None = None
    fid: CachedRealFID | None = None

    @classmethod
    def build(cls, name: str, images: torch.Tensor, labels: torch.Tensor, extractor: nn.Module | None,
              cfg: EvalConfig) -> RealReference:
        if len(images) < 2:
            raise ValueError(f"GAN evaluation: the real set {name!r} has {len(images)} patches; need at least 2")
        stats = label_realism_stats(images, labels, cfg.spacing, progress=cfg.progress)
        ref = cls(name, images, labels, stats)
        if extractor is not None:
            ref.features = extract_features(extractor, images, cfg.batch_size)
            ref.fid = CachedRealFID(ref.features, extractor)
        return ref


@dataclass
class Scores:
    fid: dict[str, Any] | None
    prd: PRDResult | None
    diversity: dict[str, float]
    label_stats: LabelRealismStats
    label_distances: dict[str, float]
    features: torch.Tensor | None
    seconds: dict[str, float] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Flat values for `self.log` (keys without the `val/`/`test/` prefix)."""
        out: dict[str, float] = {}
        if self.fid is not None:
            out["fid"] = float(self.fid["fid"])
        if self.prd is not None:
            out.update(prd_auc=self.prd.auc, prd_f8=self.prd.f_beta, prd_f1_8=self.prd.f_beta_inv)
        out["ssim_synthetic"] = self.diversity["ssim_synthetic_mean"]
        if "ssim_real_mean" in self.diversity:
            out["ssim_real"] = self.diversity["ssim_real_mean"]
        out.update({f"label_{k}": float(self.label_distances[k]) for k in LABEL_KEYS})
        out["label_empty_fraction_synthetic"] = self.label_stats.empty_fraction
        return out


def balanced_prd(syn: torch.Tensor, real: torch.Tensor, cfg: EvalConfig) -> PRDResult:
    """PRD on equal-size seeded subsets (unequal sets bias the cluster histograms); k ≤ set size."""
    n = min(len(syn), len(real))
    rng = np.random.default_rng(cfg.seed)
    pick = [torch.from_numpy(np.sort(rng.choice(len(x), n, replace=False))) for x in (syn, real)]
    k = max(1, min(cfg.prd_num_clusters, n))
    return prd_from_embeddings(syn[pick[0]], real[pick[1]], num_clusters=k, num_runs=cfg.prd_num_runs,
                               n_init=cfg.prd_n_init, seed=cfg.seed, progress=cfg.progress)


def score_synthetic(images: torch.Tensor, labels: torch.Tensor, real: RealReference, extractor: nn.Module | None,
                    cfg: EvalConfig, timer: Timer | None = None) -> Scores:
    """All per-evaluation scores of synthetic pairs (images [-1, 1], labels {0,1}) against `real`."""
    timer = timer or Timer()
    fid = prd = feats = None
    if extractor is not None and real.fid is not None and real.features is not None:
        with timer.stage("features"):
            feats = extract_features(extractor, images, cfg.batch_size)
        with timer.stage("fid"):
            fid = real.fid(feats)
        with timer.stage("prd"):  # k-means on the extractor's device (a GPU during GPU training)
            device = extractor_device(extractor)
            prd = balanced_prd(feats.to(device), real.features.to(device), cfg)
    with timer.stage("ssim"):
        diversity = diversity_report(images, real.images, n_pairs=cfg.ssim_pairs, seed=cfg.seed)
    with timer.stage("label_realism"):
        stats = label_realism_stats(images, labels, cfg.spacing, progress=cfg.progress)
        distances = compare_label_realism(stats, real.label_stats)
    return Scores(fid, prd, diversity, stats, distances, feats, timer.seconds)


def embedding_figure(feature_sets: dict[str, torch.Tensor], cfg: EvalConfig, title: str) -> Figure | None:
    if cfg.embedding == "none" or not feature_sets:
        return None
    coords, groups = embed_2d(feature_sets, method=cfg.embedding, max_per_set=cfg.embedding_max_per_set,
                              seed=cfg.seed, **({"progress": cfg.progress} if cfg.embedding == "tsne" else {}))
    return plot_embedding(coords, groups, title=f"{title} ({cfg.embedding}, extractor features)")


def validation_figures(scores: Scores, real: RealReference, cfg: EvalConfig, timer: Timer) -> dict[str, Figure]:
    figs: dict[str, Figure] = {}
    if scores.prd is not None:
        figs["prd"] = plot_prd_curves({f"synthetic vs {real.name}": scores.prd})
    if scores.features is not None and real.features is not None:
        with timer.stage("embedding"):
            fig = embedding_figure({real.name: real.features, "synthetic": scores.features}, cfg, "real vs synthetic")
        if fig is not None:
            figs["embedding"] = fig
    return figs
