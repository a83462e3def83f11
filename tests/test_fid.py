"""FID: closed form against an independent sqrtm computation, streaming, real-stat cache, checkpoint hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from metrics.fid import FrechetDistance, feature_statistics, frechet_distance
from networks.feature_extractors import FeatureExtractor


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook formula with scipy's sqrtm, written independently of metrics.fid."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class TinyProjection(FeatureExtractor):
    """Test-only extractor: a fixed random linear map of the flattened image channel."""

    def __init__(self, in_pixels: int, num_features: int = 6, seed: int = 0) -> None:
        super().__init__(channel=0)
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(in_pixels, num_features)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(num_features, in_pixels, generator=g) / in_pixels**0.5)
            self.proj.bias.zero_()
        self.name, self.weights_sha256 = "tiny_projection", "ab" * 32
        self.input_mapping, self.num_features = "channel 0; flatten; linear", num_features
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self._select(x).float().flatten(1))


@pytest.fixture
def feats() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) * 0.7 + 0.5
    return a, b


def test_frechet_distance_matches_sqrtm_reference(feats):
    a, b = feats
    got = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert got == pytest.approx(reference_fid(a, b), rel=1e-8)
    # rank-deficient covariances (N < F) still give a finite real value close to the reference
    rng = np.random.default_rng(1)
    c, d = rng.normal(size=(5, 12)), rng.normal(size=(6, 12)) + 1
    assert frechet_distance(*feature_statistics(c), *feature_statistics(d)) == pytest.approx(reference_fid(c, d), rel=1e-5)


def test_identical_sets_give_zero(feats):
    a, _ = feats
    assert abs(frechet_distance(*feature_statistics(a), *feature_statistics(a))) < 1e-9
    m = FrechetDistance(num_features=8)
    m.update(torch.from_numpy(a), real=True)
    m.update(torch.from_numpy(a), real=False)
    assert abs(float(m.compute())) < 1e-9


def test_streaming_equals_one_batch_and_reference(feats):
    a, b = feats
    one, many = FrechetDistance(num_features=8), FrechetDistance(num_features=8)
    one.update(torch.from_numpy(a), real=True)
    one.update(torch.from_numpy(b), real=False)
    for chunk in np.array_split(a, 7):
        many.update(torch.from_numpy(chunk).float(), real=True)
    for chunk in np.array_split(b, 3):
        many(torch.from_numpy(chunk), real=False)  # forward only accumulates
    ref = reference_fid(a, b)
    assert float(one.compute()) == pytest.approx(ref, rel=1e-9)
    assert float(many.compute()) == pytest.approx(ref, rel=1e-5)  # float32 batches lose a little
    res = many.result()
    assert res["n_real"] == 300 and res["n_fake"] == 250 and res["extractor"] == "precomputed_features"


def test_images_through_extractor_and_result_record():
    rng = np.random.default_rng(2)
    real = torch.from_numpy(rng.uniform(-1, 1, size=(40, 2, 8, 8))).float()
    fake = torch.from_numpy(rng.uniform(-1, 1, size=(30, 2, 8, 8)) * 0.5).float()
    ext = TinyProjection(64)
    m = FrechetDistance(extractor=ext)
    m.update(real, real=True)
    m.update(fake, real=False)
    with torch.no_grad():
        fr, ff = ext.proj(real[:, :1].flatten(1)).double().numpy(), ext.proj(fake[:, :1].flatten(1)).double().numpy()
    res = m.result()
    assert res["fid"] == pytest.approx(reference_fid(fr, ff), rel=1e-5)
    assert res == {**res, "extractor": "tiny_projection", "weights_sha256": "ab" * 32, "n_real": 40, "n_fake": 30,
                   "input_mapping": "channel 0; flatten; linear", "num_features": 6}


def test_real_stats_kept_across_reset(feats):
    a, b = feats
    m = FrechetDistance(num_features=8, reset_real_features=False)
    m.update(torch.from_numpy(a), real=True)
    m.update(torch.from_numpy(a[:50] + 3), real=False)
    first = float(m.compute())
    m.reset()
    assert int(m.real_n) == 300 and int(m.fake_n) == 0
    m.update(torch.from_numpy(b), real=False)
    assert float(m.compute()) == pytest.approx(reference_fid(a, b), rel=1e-9)
    assert first != pytest.approx(float(m.compute()))
    m2 = FrechetDistance(num_features=8)  # default resets everything
    m2.update(torch.from_numpy(a), real=True)
    m2.reset()
    assert int(m2.real_n) == 0


def test_save_and_load_real_stats(tmp_path, feats):
    a, b = feats
    ext = TinyProjection(16, num_features=8)
    src = FrechetDistance(extractor=ext)
    imgs = torch.from_numpy(np.random.default_rng(3).normal(size=(100, 1, 4, 4))).float()
    src.update(imgs, real=True)
    path = src.save_real_stats(src.real_stats_path(tmp_path, "pegasus_train"))
    assert path.name == f"pegasus_train__tiny_projection-{'ab' * 8}.npz" and path.is_file()
    dst = FrechetDistance(extractor=ext)
    dst.load_real_stats(path)
    fake = imgs[:60] * 0.5
    src.update(fake, real=False)
    dst.update(fake, real=False)
    assert float(dst.compute()) == pytest.approx(float(src.compute()), rel=1e-12)
    assert dst.result()["n_real"] == 100
    dst.reset()  # loaded statistics are a cache and survive reset
    dst.update(fake, real=False)
    assert float(dst.compute()) == pytest.approx(float(src.compute()), rel=1e-12)
    other = TinyProjection(16, num_features=8)
    other.weights_sha256 = "cd" * 32
    with pytest.raises(ValueError, match="weights_sha256"):
        FrechetDistance(extractor=other).load_real_stats(path)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        dst.load_real_stats(tmp_path / "missing.npz")


def test_extractor_stays_out_of_state_dict_and_dtype_casts():
    ext = TinyProjection(16)
    holder = nn.Module()
    holder.fid = FrechetDistance(extractor=ext)
    holder.head = nn.Linear(2, 2)
    keys = list(holder.state_dict())
    assert keys == ["head.weight", "head.bias"]
    holder.load_state_dict(holder.state_dict(), strict=True)
    holder.to(torch.bfloat16)
    assert holder.fid.real_outer.dtype == torch.float64 and ext.proj.weight.dtype == torch.float32
    holder.train()
    assert not ext.training


def test_needs_two_samples():
    m = FrechetDistance(num_features=3)
    m.update(torch.zeros(1, 3), real=True)
    m.update(torch.zeros(5, 3), real=False)
    with pytest.raises(RuntimeError, match="2 real"):
        m.compute()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        m.update(torch.zeros(4, 5), real=True)


def _ddp_worker(rank: int, world: int, init_file: str, a: np.ndarray, b: np.ndarray, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    m = FrechetDistance(num_features=a.shape[1])
    m.update(torch.from_numpy(np.array_split(a, world)[rank]), real=True)
    m.update(torch.from_numpy(np.array_split(b, world)[rank]), real=False)
    res = m.result()
    if rank == 0:
        np.save(out, np.array([res["fid"], res["n_real"], res["n_fake"]]))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_sum_reduction_equals_single_process(tmp_path, feats):
    a, b = feats
    out = str(tmp_path / "res.npy")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), a, b, out), nprocs=2, join=True)
    fid, n_real, n_fake = np.load(out)
    assert (n_real, n_fake) == (300, 250)
    assert fid == pytest.approx(reference_fid(a, b), rel=1e-9)
