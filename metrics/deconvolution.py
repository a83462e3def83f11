"""DSC-MRI deconvolution: sSVD, cSVD and oSVD with the DSC-mri toolbox conventions (../shared/notes/perfusion.md B3.8).

Written here because no installable package does it correctly on our Python (note B4: osipy's "circulant" matrix
is the lower-triangular Toeplitz one, so its cSVD/oSVD are not delay-insensitive).

- The AIF matrix uses the toolbox's quadrature weights (a_{k−1} + 4a_k + a_{k+1})/6 (first entry (4a_0 + a_1)/6),
  times the time step. sSVD: the N×N lower-triangular Toeplitz matrix. cSVD/oSVD: the 2N×2N block-circulant
  matrix of the zero-padded weights, with the tissue curve zero-padded to 2N: a tissue curve that arrives before
  or after the AIF gives a shifted residue instead of a truncated one (delay-insensitive).
- Truncation: singular values below threshold·s_max are dropped (sSVD 0.2, cSVD 0.1 toolbox defaults).
- oSVD: thresholds 5 %, 10 %, …, 95 % are tried upward, per voxel, until the oscillation index
  OI = (1/L)(1/max R)·Σ_j |R_j − 2R_{j−1} + R_{j−2}| (second differences over the whole residue, L its length)
  falls below 0.035; the 95 % residue is kept when none does.
All voxels are solved together: one SVD, then matrix products over (time, voxels) in chunks of voxels. For oSVD the
residue at each threshold is a partial sum of the same singular components, so every threshold costs one
subtraction instead of one solve.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


RHO = 1.04  # brain density, g/ml
K_H = (1 - 0.45) / (1 - 0.25)  # large- vs small-vessel haematocrit correction, 0.733
Method = Literal["ssvd", "csvd", "osvd"]
OSVD_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
DEFAULT_THRESHOLD = {"ssvd": 0.2, "csvd": 0.1}
CHUNK = 8192


def aif_weights(aif: np.ndarray) -> np.ndarray:
    """Simpson-like quadrature weights of the AIF samples (toolbox convention)."""
    a = np.asarray(aif, np.float64)
    prev = np.concatenate([[0.0], a[:-1]])
    nxt = np.concatenate([a[1:], [0.0]])
    return (prev + 4 * a + nxt) / 6.0


def toeplitz_matrix(aif: np.ndarray, dt: float) -> np.ndarray:
    """N×N lower-triangular convolution matrix: A[i, j] = dt·w[i − j] for i ≥ j."""
    w = aif_weights(aif) * dt
    n = len(w)
    idx = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.where(idx >= 0, w[np.clip(idx, 0, None)], 0.0)


def circulant_matrix(aif: np.ndarray, dt: float) -> np.ndarray:
    """2N×2N block-circulant matrix of the zero-padded weights: A[i, j] = dt·w_pad[(i − j) mod 2N]."""
    w = np.concatenate([aif_weights(aif) * dt, np.zeros(len(aif))])
    n2 = len(w)
    return w[(np.arange(n2)[:, None] - np.arange(n2)[None, :]) % n2]


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """OI of residues along axis 0 (length L): (1/L)(1/max R)·Σ|second differences|."""
    r = np.asarray(residue)
    second = np.abs(r[2:] - 2 * r[1:-1] + r[:-2]).sum(axis=0)
    peak = r.max(axis=0)
    return np.where(peak > 0, second / (len(r) * np.where(peak > 0, peak, 1.0)), np.inf)


def deconvolve(tissue: np.ndarray, aif: np.ndarray, dt: float, method: Method = "osvd",
               threshold: float | None = None, oi_target: float = 0.035) -> np.ndarray:
    """Residue k(t) = CBF·R(t)·ρ/k_H (in s⁻¹ per unit of the AIF) of tissue curves (T, V) against one AIF (T,).

    Returns (T, V) for sSVD and (2T, V) for cSVD/oSVD (the second half holds negative delays, wrapped).
    `threshold`: relative truncation for sSVD/cSVD (default 0.2 / 0.1); ignored by oSVD.
    """
    tissue = np.asarray(tissue)
    n = len(aif)
    if tissue.shape[0] != n:
        raise ValueError(f"metrics/deconvolution.py: tissue curves have {tissue.shape[0]} frames, the AIF {n}")
    if method == "ssvd":
        matrix = toeplitz_matrix(aif, dt)
    elif method in ("csvd", "osvd"):
        matrix = circulant_matrix(aif, dt)
    else:
        raise ValueError(f"metrics/deconvolution.py: unknown deconvolution method {method!r}; expected ssvd, csvd "
                         "or osvd")
    u, s, vt = np.linalg.svd(matrix)
    u = u[:n]  # the zero padding of the tissue curve meets only the first N rows of U (Uᵀ c)
    if method != "osvd":
        thr = DEFAULT_THRESHOLD[method] if threshold is None else threshold
        inv = np.where(s >= thr * s[0], 1.0 / np.where(s > 0, s, 1.0), 0.0)
        return (vt.T * inv) @ (u.T @ np.asarray(tissue, np.float64))
    return _osvd(u, s, vt, tissue, oi_target)


def _osvd(u: np.ndarray, s: np.ndarray, vt: np.ndarray, c: np.ndarray, oi_target: float) -> np.ndarray:
    """Per-voxel threshold scan. Components are grouped by the threshold that drops them, so raising the
    threshold subtracts one group's contribution; only voxels still above the OI target are carried on."""
    out = np.empty((vt.shape[0], c.shape[1]), np.float32)
    thr = np.asarray(OSVD_THRESHOLDS) * s[0]
    keep = [s >= t for t in thr]
    bins = [keep[b] & ~keep[b + 1] for b in range(len(thr) - 1)] + [keep[-1]]
    inv = 1.0 / np.where(s > 0, s, 1.0)
    left = (u.T * inv[:, None]).astype(np.float32)  # z = diag(1/s) Uᵀ c
    right = vt.T.astype(np.float32)
    for start in range(0, c.shape[1], CHUNK):
        z = left[keep[0]] @ c[:, start:start + CHUNK].astype(np.float32)
        r = right[:, keep[0]] @ z  # residue at the lowest threshold (5 %)
        zb = {b: z[bins[b][keep[0]]] for b in range(len(thr))}
        active = np.arange(z.shape[1])
        for b in range(len(thr)):
            ok = oscillation_index(r) < oi_target if b < len(thr) - 1 else np.ones(len(active), bool)
            out[:, start + active[ok]] = r[:, ok]
            active, r = active[~ok], r[:, ~ok]
            if not active.size:
                break
            r -= right[:, bins[b]] @ zb[b][:, active]
    return out


def perfusion_maps(dr2: np.ndarray, aif: np.ndarray, tr: float, method: Method = "osvd",
                   threshold: float | None = None, smooth_ttp: bool = True) -> dict[str, np.ndarray]:
    """The five maps a clinical pipeline computes from tissue ΔR2* curves (T, V) and the AIF (T,), TR in s.

    CBF = max k·k_H/ρ·6000 (ml/100 g/min); CBV = ∫C_t/∫C_a·k_H/ρ·100 (ml/100 g); MTT = CBV/CBF·60 (s);
    Tmax = argmax k·TR (s; a maximum in the wrapped half of a circulant residue is a negative delay);
    TTP = argmax of the tissue curve·TR (s from the first frame), after a [1, 2, 1]/4 temporal smoothing when
    `smooth_ttp` (raw-curve TTP is unstable with noise; note B7.7).
    """
    dr2 = np.asarray(dr2, np.float32)
    n = dr2.shape[0]
    k = deconvolve(dr2, aif, tr, method, threshold)
    peak = k.argmax(axis=0)
    kmax = k.max(axis=0)
    cbf = np.clip(kmax, 0, None) * K_H / RHO * 6000.0
    cbv = dr2.sum(axis=0) / float(np.sum(aif)) * K_H / RHO * 100.0
    mtt = np.where(cbf > 0, cbv / np.where(cbf > 0, cbf, 1.0) * 60.0, 0.0)
    tmax = np.where(peak >= n, peak - len(k), peak) * tr
    curve = dr2
    if smooth_ttp:
        pad = np.concatenate([dr2[:1], dr2, dr2[-1:]], axis=0)
        curve = 0.25 * pad[:-2] + 0.5 * pad[1:-1] + 0.25 * pad[2:]
    ttp = curve.argmax(axis=0) * tr
    return {name: np.asarray(v, np.float32) for name, v in
            {"cbf": cbf, "cbv": cbv, "mtt": mtt, "tmax": tmax, "ttp": ttp}.items()}


def dr2_from_signal(signal: np.ndarray, te: float, n_baseline: int) -> np.ndarray:
    """ΔR2*(t) = −ln(S(t)/S0)/TE along axis 0, S0 the mean of the first n_baseline frames (clipped: finite)."""
    s = np.asarray(signal, np.float64)
    s0 = s[:n_baseline].mean(axis=0)
    ratio = np.clip(s / np.where(s0 > 0, s0, 1.0), 1e-3, None)
    return np.where(s0 > 0, -np.log(ratio) / te, 0.0)
