"""Indicator-dilution model of DSC-MRI (standard simulation model; ../shared/notes/perfusion.md B3).

- AIF: gamma variate (t − t0)^α·e^{−(t − t0)/β} plus a delayed, wider recirculation gamma variate, in ΔR2*
  units (s⁻¹): the same κ relates ΔR2* to concentration in artery and tissue, so it cancels and is never needed.
- Tissue: C_t(t) = (ρ/k_H)·CBF·[C_a(· − δ) ⊛ h_disp ⊛ R](t), R(t) = e^{−t/MTT},
  h_disp(t) = e^{−t/β_d}/β_d.
  Both kernels are first-order linear systems, so the convolutions are two recursive filters run over all voxels
  at once on a fine grid (first-order hold, exact for an input linear between fine steps: the areas, hence
  CBV = CBF·MTT, are preserved). The delay enters through the input: C_a is evaluated at t − δ per voxel.
- Signal: S(t) = S0·e^{−TE·ΔR2*(t)} plus noise: Gaussian in the head (high-SNR Rician), Rayleigh in air.
- Truth: CBV = CBF·MTT/60 (ml/100 g, central volume theorem), Tmax = δ + argmax(h_disp ⊛ R) (closed form),
  TTP = argmax of the noise-free tissue curve on the fine grid, refined by a parabola through the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metrics.deconvolution import K_H, RHO

#: CBF in ml/100 g/min → ml/g/s, times ρ/k_H: the factor in front of the tissue convolution.
CBF_TO_RATE = RHO / K_H / 6000.0


@dataclass(frozen=True)
class AIFParams:
    t0: float  # bolus arrival (s from the first frame)
    peak: float = 300.0  # ΔR2* at the first-pass peak (s⁻¹); the GM dip is then ~25–30 % at TE 29–36 ms
    alpha: float = 3.0
    beta: float = 1.5  # s
    recirc_delay: float = 8.0  # s after t0
    recirc_fraction: float = 0.12  # recirculation peak / first-pass peak
    recirc_beta: float = 3.0  # s


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """(t − t0)^α e^{−(t − t0)/β}, normalised to peak 1 (peak at t0 + αβ); 0 before t0."""
    s = np.clip((np.asarray(t, dtype=np.float64) - t0) / (alpha * beta), 0.0, None)
    return np.where(s > 0, s**alpha * np.exp(alpha * (1.0 - s)), 0.0)


def aif_curve(t: np.ndarray, p: AIFParams) -> np.ndarray:
    """Arterial ΔR2*(t) in s⁻¹: first pass plus recirculation."""
    first = gamma_variate(t, p.t0, p.alpha, p.beta)
    recirc = gamma_variate(t, p.t0 + p.recirc_delay, p.alpha, p.recirc_beta)
    return p.peak * (first + p.recirc_fraction * recirc)


def _foh(tau: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients of y' = (x − y)/τ discretised with a first-order hold:
    y_n = a·y_{n−1} + b0·x_n + b1·x_{n−1}. Unit DC gain; τ → 0 gives the identity (no dispersion)."""
    tau = np.maximum(np.asarray(tau, dtype=np.float64), 1e-9)
    a = np.exp(-h / tau)
    r = tau / h * (1.0 - a)
    return a.astype(np.float32), (1.0 - r).astype(np.float32), (r - a).astype(np.float32)


def tissue_curves(
    cbf: np.ndarray, mtt: np.ndarray, delay: np.ndarray, disp: np.ndarray, aif: AIFParams,
    tr: float, frames: int, oversample: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue ΔR2* (V, frames) sampled at k·TR, and TTP (V,) in s, for V voxels given as 1D arrays.

    Runs the two recursive filters over a fine grid of step TR/oversample, vectorised over voxels; memory stays
    O(V·frames). CBF in ml/100 g/min, MTT, delay, dispersion in s.
    """
    h = tr / oversample
    n_fine = (frames - 1) * oversample + 1
    a1, b01, b11 = _foh(mtt, h)  # residue e^{−t/MTT} = MTT × unit-gain filter
    a2, b02, b12 = _foh(disp, h)
    gain = (np.asarray(cbf, np.float64) * CBF_TO_RATE * np.asarray(mtt, np.float64)).astype(np.float32)
    # AIF on a 4× finer table, read by linear interpolation at t − δ (delays are continuous).
    delay = np.asarray(delay, np.float32)
    if delay.size and delay.min() < 0:
        raise ValueError(f"arterial delays must be >= 0 s, got {float(delay.min())}")
    step = h / 4
    j0 = int(np.ceil(float(delay.max(initial=0.0)) / step)) + 2  # table starts at −j0·step: room for every delay
    table = aif_curve((np.arange(4 * n_fine + j0 + 2) - j0) * step, aif).astype(np.float32)
    v = delay.shape[0]
    # Table position of t_n − δ is 4n + off + w with off, w fixed per voxel (the fine grid is uniform).
    pos0 = j0 - delay.astype(np.float64) / step
    off = np.floor(pos0).astype(np.int64)
    w = (pos0 - off).astype(np.float32)
    out = np.empty((v, frames), np.float32)
    y1 = np.zeros(v, np.float32)
    y2 = np.zeros(v, np.float32)
    x_prev = np.zeros(v, np.float32)
    best = np.full(v, -1.0, np.float32)
    best_n = np.zeros(v, np.int64)
    hist = np.zeros((3, v), np.float32)  # the fine samples around the running maximum, for the parabola
    y_prev = np.zeros(v, np.float32)
    for n in range(n_fine):
        i0 = off + 4 * n
        x = table[i0]
        x += (table[i0 + 1] - x) * w
        y1_new = a1 * y1 + b01 * x + b11 * x_prev
        y2_new = a2 * y2 + b02 * y1_new + b12 * y1
        y1, x_prev = y1_new, x
        if n > 0:  # the sample after a new maximum completes its parabola
            after = best_n == n - 1
            hist[2, after] = y2_new[after]
        new_best = y2_new > best
        if new_best.any():
            hist[0, new_best] = y_prev[new_best]
            hist[1, new_best] = y2_new[new_best]
            hist[2, new_best] = y2_new[new_best]
            best[new_best] = y2_new[new_best]
            best_n[new_best] = n
        y_prev = y2 = y2_new
        if n % oversample == 0:
            out[:, n // oversample] = y2_new
    out *= gain[:, None]
    denom = hist[0] - 2 * hist[1] + hist[2]
    frac = np.where(denom < 0, 0.5 * (hist[0] - hist[2]) / np.where(denom < 0, denom, 1), 0.0)
    ttp = (best_n + np.clip(frac, -0.5, 0.5)) * h
    return out, ttp.astype(np.float32)


def residue_peak_time(mtt: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """argmax_t of (h_disp ⊛ R)(t): 0 without dispersion, else ln(MTT/β)·MTT·β/(MTT − β) (β when MTT = β)."""
    m = np.asarray(mtt, np.float64)
    b = np.asarray(disp, np.float64)
    close = np.abs(m - b) < 1e-6 * np.maximum(m, 1e-9)
    safe_b = np.where(b > 0, b, 1.0)
    safe_d = np.where(close, 1.0, m - b)
    t = np.where(close, b, np.log(m / safe_b) * m * safe_b / safe_d)
    return np.where(b > 0, t, 0.0)


def truth_maps(cbf: np.ndarray, mtt: np.ndarray, delay: np.ndarray, disp: np.ndarray,
               ttp: np.ndarray) -> dict[str, np.ndarray]:
    """The five maps from the model's parameters (CBF ml/100 g/min, CBV ml/100 g, MTT/Tmax/TTP s)."""
    return {"cbf": np.asarray(cbf, np.float32), "cbv": (np.asarray(cbf) * mtt / 60.0).astype(np.float32),
            "mtt": np.asarray(mtt, np.float32),
            "tmax": (np.asarray(delay) + residue_peak_time(mtt, disp)).astype(np.float32),
            "ttp": np.asarray(ttp, np.float32)}


def dsc_signal(s0: np.ndarray, te: float, sigma: float, rng: np.random.Generator,
               dr2: np.ndarray | None = None, tracer_index: np.ndarray | None = None,
               frames: int | None = None) -> np.ndarray:
    """Magnitude signal (V, T): S0·e^{−TE·ΔR2*} plus noise of SD sigma per complex channel.

    `dr2` (V_t, T) belongs to the voxels `tracer_index` (all others carry no tracer). Where S0 > 0 (head, SNR ≥ 20
    even at the bolus dip) the magnitude is the signal plus real Gaussian noise, the high-SNR limit of the Rician
    distribution (note B3.4); where S0 = 0 (air) it is Rayleigh, the exact magnitude of pure complex noise. One
    Gaussian per head sample instead of two halves the cost at full size.
    """
    s0 = np.asarray(s0, np.float32).reshape(-1)
    t = dr2.shape[1] if dr2 is not None else int(frames or 0)
    out = np.repeat(s0[:, None], t, axis=1)
    if dr2 is not None:
        idx = np.arange(len(s0)) if tracer_index is None else tracer_index
        out[idx] *= np.exp(np.float32(-te) * dr2)
    if sigma <= 0:
        return out
    head = s0 > 0
    out[head] += rng.standard_normal((int(head.sum()), t), dtype=np.float32) * np.float32(sigma)
    np.abs(out, out=out)
    air = ~head
    out[air] = rng.rayleigh(sigma, (int(air.sum()), t)).astype(np.float32)
    return out
