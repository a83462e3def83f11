"""DSC/95HD/bAVD against brute-force pairwise distances; empty-mask policy; streaming of the Metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics.segmentation import (
    PerPatientSegmentationMetrics,
    bavd,
    dice,
    hd95,
    patient_key,
    segmentation_metrics,
)

SPACING = (0.5, 0.7, 1.3)


def _random_mask(rng: np.random.Generator, shape=(10, 9, 7), p=0.25) -> np.ndarray:
    return rng.random(shape) < p


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour outside the mask; outside the image counts as outside."""
    pad = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(pad, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def _min_dists(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """For every voxel of a, the Euclidean distance (mm) to the nearest voxel of b, by explicit pairs."""
    ca = np.argwhere(a) * np.asarray(spacing)
    cb = np.argwhere(b) * np.asarray(spacing)
    return np.sqrt(((ca[:, None, :] - cb[None, :, :]) ** 2).sum(-1)).min(1)


def _ref_hd95(p, g, spacing):
    sp, sg = _surface(p), _surface(g)
    return np.percentile(np.concatenate([_min_dists(sp, sg, spacing), _min_dists(sg, sp, spacing)]), 95)


def _ref_bavd(p, g, spacing):
    return 0.5 * (_min_dists(g, p, spacing).sum() + _min_dists(p, g, spacing).sum()) / g.sum()


def _ref_dice(p, g):
    tp, fp, fn = (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spacing", [SPACING, (1.0, 1.0, 1.0)])
def test_metrics_equal_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    g = _random_mask(rng)
    p = g ^ (rng.random(g.shape) < 0.15)  # a perturbed prediction
    assert dice(p, g) == pytest.approx(_ref_dice(p, g), rel=1e-12)
    assert hd95(p, g, spacing) == pytest.approx(_ref_hd95(p, g, spacing), rel=1e-6)
    assert bavd(p, g, spacing) == pytest.approx(_ref_bavd(p, g, spacing), rel=1e-6)


def test_metrics_accept_torch_and_2d():
    rng = np.random.default_rng(5)
    g = rng.random((12, 11)) < 0.3
    p = rng.random((12, 11)) < 0.3
    sp = (0.8, 1.7)
    out = segmentation_metrics(torch.from_numpy(p.astype(np.uint8)), torch.from_numpy(g.astype(np.float32)), sp)
    assert out["dsc"] == pytest.approx(_ref_dice(p, g))
    assert out["hd95"] == pytest.approx(_ref_hd95(p, g, sp), rel=1e-6)
    assert out["bavd"] == pytest.approx(_ref_bavd(p, g, sp), rel=1e-6)


def test_known_values_one_voxel_shift():
    g = np.zeros((5, 5, 5), bool)
    g[2, 2, 2] = True
    p = np.zeros_like(g)
    p[2, 2, 3] = True  # one voxel along z (1.3 mm)
    assert dice(p, g) == 0.0
    assert hd95(p, g, SPACING) == pytest.approx(1.3)
    assert bavd(p, g, SPACING) == pytest.approx(1.3)  # ½(1.3 + 1.3)/1
    assert bavd(g, g, SPACING) == 0.0 and hd95(g, g, SPACING) == 0.0 and dice(g, g) == 1.0


def test_bavd_is_balanced_by_reference_size():
    g = np.zeros((1, 1, 10), bool)
    g[0, 0, 0] = True
    p = g.copy()
    p[0, 0, 3] = True  # one false positive 3 voxels away
    assert bavd(p, g) == pytest.approx(0.5 * 3 / 1)  # divided by |G| = 1, not |P| = 2


def test_empty_mask_policy():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert segmentation_metrics(empty, empty, SPACING) == {"dsc": 1.0, "hd95": 0.0, "bavd": 0.0, "bavd_vox": 0.0}
    for p, g in ((empty, full), (full, empty)):
        out = segmentation_metrics(p, g, SPACING)
        assert out["dsc"] == 0.0 and math.isnan(out["hd95"]) and math.isnan(out["bavd"]) and math.isnan(out["bavd_vox"])


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.7), (0.5, 0.7)], ids=["3d", "2d"])
def test_bavd_in_voxels_and_mm_on_a_known_case(spacing):
    """G = {x 1, x 2} on one line; P = G moved 2 voxels along the last axis (0.7 mm steps) + a false positive at
    x 4 on G's line (0.5 mm steps). The nearest neighbour of G's x-2 voxel in P differs by unit: 2 voxels either
    way, but 1.0 mm (the false positive) against 1.4 mm. Voxels: d(G→P) = 2 + 2, d(P→G) = 2 + 2 + 2, bAVD =
    ½·10/|G| = 2.5; mm: d(G→P) = 1.4 + 1.0, d(P→G) = 1.4 + 1.4 + 1.0, bAVD = ½·6.2/2 = 1.55."""
    ndim = len(spacing)
    at = lambda x, last: (x,) + (1,) * (ndim - 2) + (last,)  # noqa: E731
    g = np.zeros((6,) * ndim, bool)
    p = g.copy()
    g[at(1, 1)] = g[at(2, 1)] = True
    p[at(1, 3)] = p[at(2, 3)] = p[at(4, 1)] = True
    out = segmentation_metrics(p, g, spacing)
    assert out["bavd_vox"] == pytest.approx(2.5)
    assert out["bavd"] == pytest.approx(1.55)
    assert bavd(p, g) == bavd(p, g, (1.0,) * ndim) == out["bavd_vox"]  # no spacing = unit spacing = voxels
    assert segmentation_metrics(p, g)["bavd"] == segmentation_metrics(p, g)["bavd_vox"] == 2.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1.0, 1.0))
    m = PerPatientSegmentationMetrics()
    with pytest.raises(ValueError, match="B, 1"):
        m.update(torch.ones(1, 3, 3, 3), torch.ones(1, 3, 3, 3), None, ["a"])


def _cases(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        g = _random_mask(rng, (8, 8, 6))
        p = g ^ (rng.random(g.shape) < 0.1)
        out.append((f"p{i:02d}", p, g))
    empty = np.zeros((8, 8, 6), bool)
    out.append(("only_pred", out[0][1], empty))  # undefined distances
    out.append(("both_empty", empty, empty))
    return out


def _as_batch(masks):
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.uint8))


def test_metric_streaming_equals_one_pass_and_functions():
    cases = _cases()
    sp = torch.tensor([SPACING] * len(cases), dtype=torch.float64)
    one = PerPatientSegmentationMetrics()
    one.update(_as_batch([c[1] for c in cases]), _as_batch([c[2] for c in cases]), sp, [c[0] for c in cases])
    streamed = PerPatientSegmentationMetrics()
    for i in range(0, len(cases), 2):  # uneven chunks, plus a repeated patient as DistributedSampler pads
        chunk = cases[i : i + 2]
        streamed.update(_as_batch([c[1] for c in chunk]), _as_batch([c[2] for c in chunk]), SPACING,
                        [c[0] for c in chunk])
    streamed.update(_as_batch([cases[0][1]]), _as_batch([cases[0][2]]), SPACING, [cases[0][0]])

    a, b = one.compute(), streamed.compute()
    for k in a:
        assert torch.allclose(a[k], b[k], equal_nan=True), k

    rows = [segmentation_metrics(p, g, SPACING) for _, p, g in cases]
    for name in ("dsc", "hd95", "bavd"):
        v = np.array([r[name] for r in rows])
        ok = v[~np.isnan(v)]
        assert a[f"{name}_mean"].item() == pytest.approx(ok.mean())
        assert a[f"{name}_std"].item() == pytest.approx(ok.std(ddof=1))
        assert a[f"{name}_n_undefined"].item() == np.isnan(v).sum()
    assert a["hd95_n_undefined"].item() == 1 and a["dsc_n_undefined"].item() == 0
    assert a["n_patients"].item() == len(cases)

    table = streamed.per_patient_table()
    assert [r["patient_id"] for r in table] == [c[0] for c in cases]
    assert table[3]["bavd"] == pytest.approx(rows[3]["bavd"])


def test_metric_reset_and_keys_are_stable():
    assert patient_key("sub-001") == patient_key("sub-001") != patient_key("sub-002")
    assert patient_key("sub-001") < 2**53
    m = PerPatientSegmentationMetrics()
    m.update(torch.ones(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2), None, ["x"])
    m.reset()
    assert m.compute()["n_patients"].item() == 0 and m.per_patient_table() == []


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cases = _cases()
    padded = list(range(len(cases))) + [0]  # DistributedSampler-style padding: patient 0 seen twice
    m, lonely = PerPatientSegmentationMetrics(), PerPatientSegmentationMetrics()
    for i in padded[rank::world]:
        pid, p, g = cases[i]
        m.update(_as_batch([p]), _as_batch([g]), SPACING, [pid])
    if rank == 0:  # the other rank has no rows at all
        lonely.update(_as_batch([cases[1][1]]), _as_batch([cases[1][2]]), SPACING, [cases[1][0]])
    res, table, res_lonely = m.compute(), m.per_patient_table(), lonely.compute()
    if rank == 0:
        torch.save({"res": res, "table": table, "lonely": res_lonely}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_metric_ddp_two_processes_equals_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)

    cases = _cases()
    ref = PerPatientSegmentationMetrics()
    for pid, p, g in cases:
        ref.update(_as_batch([p]), _as_batch([g]), SPACING, [pid])
    expected = ref.compute()
    for k, v in expected.items():
        assert torch.allclose(got["res"][k], v, equal_nan=True), k
    assert sorted(r["patient_id"] for r in got["table"]) == sorted(c[0] for c in cases)
    assert got["lonely"]["n_patients"].item() == 1
    assert got["lonely"]["dsc_mean"].item() == pytest.approx(dice(cases[1][1], cases[1][2]))


def test_negative_stride_bool_views_are_accepted():
    """np.flip views of bool masks (negative strides) cannot go to torch.from_numpy as they are."""
    rng = np.random.default_rng(7)
    g = _random_mask(rng)
    p = g ^ (rng.random(g.shape) < 0.15)
    fp, fg = np.flip(p, axis=0), np.flip(g, axis=(1, 2))
    assert fp.strides[0] < 0 and fg.dtype == bool
    want = _ref_hd95(np.ascontiguousarray(fp), np.ascontiguousarray(fg), SPACING)
    assert hd95(fp, fg, SPACING) == pytest.approx(want, rel=1e-6)
    assert segmentation_metrics(fp, fg, SPACING)["dsc"] == pytest.approx(_ref_dice(fp.copy(), fg.copy()))
