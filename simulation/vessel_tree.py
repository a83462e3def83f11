"""Arterial trees as centreline points with radii, grown by recursive territory splitting.

Each branch owns a cloud of "territory" points inside the brain. A branch runs towards its territory's
centroid, then splits the cloud in two along its longest axis; children get radii by Murray's law
(r³ ∝ territory size, so r_parent³ = r_1³ + r_2³ holds exactly) and recurse until the radius drops to
the stop radius. Because radius follows territory, the vessel volume per brain volume hardly depends on
the field-of-view scale, which keeps small demo volumes statistically realistic. Roots are two internal
carotids and the basilar artery entering from below, joined by a circle-of-Willis-like ring.

`background_vessels` adds what real TOF shows besides the labelled tree: many faint arterioles and
venules below the label's size, as short random curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: anatomy imports the rasteriser, which imports this module
    from simulation.anatomy import BrainShape

ICA_RADIUS_MM = 2.7
BASILAR_RADIUS_MM = 1.8
STOP_RADIUS_MM = 0.4
TERRITORY_POINTS_FULL = 16000
#: Root radii shrink as scale**RADIUS_EXPONENT: 1 would be pure similarity (fraction invariant, thinner
#: large vessels); lower keeps big arteries realistic in small demo volumes.
RADIUS_EXPONENT = 0.75
#: Terminal twigs are drawn with probability TWIG_VISIBILITY * scale**0.5 (a small volume has fewer
#: generations above its twigs, so fewer twigs keep its calibre distribution close to full size) and reach
#: TWIG_REACH of the way to their territory centroid; branch points sit BRANCH_REACH of the way.
TWIG_VISIBILITY = 0.7
TWIG_REACH = (0.4, 0.9)
BRANCH_REACH = (0.4, 0.75)
#: Share of twigs interrupted by a short signal gap, leaving the small fragments real labels have.
TWIG_GAP_PROBABILITY = 0.4


@dataclass
class Centrelines:
    points: np.ndarray  # (P, 3) float32 grid mm
    radius: np.ndarray  # (P,) float32 mm
    travel: np.ndarray  # (P,) float32 mm of flow path from where the artery entered the slab
    splits: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (parent, child, child) radii


class _Builder:
    def __init__(self, rng: np.random.Generator, tortuosity: float, r_stop: float, twig_visibility: float) -> None:
        self.rng, self.tortuosity, self.r_stop, self.twig_visibility = rng, tortuosity, r_stop, twig_visibility
        self.pts: list[np.ndarray] = []
        self.rad: list[np.ndarray] = []
        self.trav: list[np.ndarray] = []
        self.splits: list[tuple[float, float, float]] = []  # (parent, child, child) radii, for checking Murray

    def curve(
        self, p0: np.ndarray, p1: np.ndarray, d0: np.ndarray, r0: float, r1: float, travel0: float, wiggle: float = 1.0
    ) -> tuple[np.ndarray, float]:
        """Hermite curve p0→p1 leaving along d0, with smooth sideways wiggles; returns end tangent, travel."""
        chord = p1 - p0
        length = float(np.linalg.norm(chord)) + 1e-6
        u = chord / length
        d1 = _unit(u + 0.35 * _unit(self.rng.standard_normal(3)))
        step = float(np.clip(0.5 * min(r0, r1), 0.12, 0.8))
        n = max(3, int(np.ceil(1.3 * length / step)))
        t = np.linspace(0.0, 1.0, n)[:, None]
        h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
        path = h00 * p0 + h10 * (0.7 * length * d0) + h01 * p1 + h11 * (0.7 * length * d1)
        e1 = _unit(np.cross(u, self.rng.standard_normal(3)))
        e2 = np.cross(u, e1)
        amp = self.tortuosity * wiggle * length
        for k in (1, 2, 3):  # integer half-waves vanish at both ends, keeping the joints in place
            a1, a2 = self.rng.normal(0.0, amp / k, 2)
            path += np.sin(np.pi * k * t) * (a1 * e1 + a2 * e2)
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        travel = travel0 + np.concatenate([[0.0], np.cumsum(seg)])
        self.pts.append(path.astype(np.float32))
        self.rad.append(np.linspace(r0, r1, n).astype(np.float32))
        self.trav.append(travel.astype(np.float32))
        return _unit(path[-1] - path[-2]), float(travel[-1])

    def grow(self, start: np.ndarray, direction: np.ndarray, r: float, terr: np.ndarray, travel: float) -> None:
        """Run towards the territory centroid, split the territory, recurse (explicit stack, no recursion limit)."""
        stack = [(start, direction, r, terr, travel, True)]
        while stack:
            p, d, r, terr, trav, major = stack.pop()
            c = terr.mean(axis=0)
            to_c = c - p
            dist = float(np.linalg.norm(to_c))
            d0 = _unit(0.6 * d + 0.4 * _unit(to_c)) if major else _unit(0.25 * d + _unit(to_c))
            if r < self.r_stop * 2 ** (1 / 3) or len(terr) < 4 or dist < 2 * r:
                if self.rng.random() < self.twig_visibility:  # slow flow hides many twigs from TOF
                    n0 = len(self.pts)
                    self.curve(p, p + to_c * self.rng.uniform(*TWIG_REACH), d0, r, 0.9 * r, trav)
                    if self.rng.random() < TWIG_GAP_PROBABILITY:
                        self._cut_gap(n0)
                continue
            b = p + to_c * self.rng.uniform(*BRANCH_REACH)
            d_end, trav_b = self.curve(p, b, d0, r, r, trav)
            centred = terr - c
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            axis = _unit(axis + 0.3 * _unit(self.rng.standard_normal(3)))
            proj = centred @ axis
            f_min = max(0.1, (0.85 * self.r_stop / r) ** 3)
            f = self.rng.uniform(f_min, 0.5) if f_min < 0.5 else 0.5
            order = np.argsort(proj)
            n_small = int(round(f * len(terr)))
            small, big = terr[order[:n_small]], terr[order[n_small:]]
            if self.rng.random() < 0.5:
                small, big = terr[order[-n_small:]], terr[order[:-n_small]]
            f = len(small) / len(terr)  # Murray's law on the realised split: r³ ∝ territory size
            r_small, r_big = r * f ** (1 / 3), r * (1 - f) ** (1 / 3)
            self.splits.append((r, r_small, r_big))
            stack.append((b, d_end, r_small, small, trav_b, False))
            stack.append((b, d_end, r_big, big, trav_b, True))

    def _cut_gap(self, i: int) -> None:
        """Drop a 1-2.5 mm stretch of curve i: distal signal loss fragments real TOF labels the same way."""
        travel = self.trav[i] - self.trav[i][0]
        start = self.rng.uniform(0.15, 0.6) * travel[-1]
        keep = (travel < start) | (travel > start + self.rng.uniform(1.0, 2.5))
        self.pts[i], self.rad[i], self.trav[i] = self.pts[i][keep], self.rad[i][keep], self.trav[i][keep]

    def result(self) -> Centrelines:
        return Centrelines(
            np.concatenate(self.pts),
            np.concatenate(self.rad),
            np.concatenate(self.trav),
            np.asarray(self.splits, dtype=np.float64).reshape(-1, 3),
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def territory_points(
    brain: BrainShape, fov_mm: np.ndarray, n: int, rng: np.random.Generator, margin: float = 1.5
) -> np.ndarray:
    """Points inside brain and field of view, denser in the outer shell where cortical arteries run."""
    lo = np.maximum(brain.centre_mm - brain.semi_axes_mm * 1.1, margin)
    hi = np.minimum(brain.centre_mm + brain.semi_axes_mm * 1.1, fov_mm - margin)
    chunks, have = [], 0
    while have < n:
        cand = rng.uniform(lo, hi, size=(4 * n, 3))
        rho = brain.rho(cand)
        keep = (rho < 0.97) & (rng.random(len(cand)) < np.where(rho > 0.72, 1.0, 0.45))
        chunks.append(cand[keep])
        have += int(keep.sum())
    return np.concatenate(chunks)[:n]


def grow_arteries(
    brain: BrainShape, fov_mm: np.ndarray, scale: float, rng: np.random.Generator, tortuosity: float
) -> Centrelines:
    """Carotids and basilar from the slab's lower edge, a Willis ring, and territory-split trees above it."""
    b = _Builder(rng, tortuosity, STOP_RADIUS_MM, float(np.clip(TWIG_VISIBILITY * scale**0.5, 0.3, 1.0)))
    rs = scale**RADIUS_EXPONENT
    r_ica, r_ba = ICA_RADIUS_MM * rs * rng.uniform(0.92, 1.08), BASILAR_RADIUS_MM * rs * rng.uniform(0.9, 1.1)
    cx, cy = brain.centre_mm[0], brain.centre_mm[1]
    s = scale
    z_ring = min(13.0 * s, 0.3 * fov_mm[2]) + 2.0
    ring_a, ring_b = 11.0 * s, 13.0 * s
    y_ring = cy - 2.0 * s

    def ring(theta_deg: float) -> np.ndarray:
        t = np.deg2rad(theta_deg)
        return np.array([cx + ring_a * np.sin(t), y_ring + ring_b * np.cos(t), z_ring + 1.5 * s * np.cos(t)])

    up = np.array([0.0, 0.0, 1.0])
    # Feeding arteries: the carotid siphon is tortuous, the basilar runs straight up the clivus.
    ends: dict[str, tuple[np.ndarray, float]] = {}
    for side, name in ((1, "R"), (-1, "L")):
        p0 = np.array([cx + side * 15.0 * s, cy + 4.0 * s, 0.0])
        # Carotid siphon: forwards and up, then back into the ring (the C-shaped cavernous segment).
        w = np.array([cx + side * 17.0 * s, cy + 16.0 * s, 0.55 * z_ring])
        d_w, t_w = b.curve(p0, w, _unit(np.array([0.0, 0.6, 1.0])), r_ica, r_ica, 0.0, wiggle=1.0)
        d_in = _unit(d_w + np.array([0, 0, 1.0]))
        ends[name] = b.curve(w, ring(side * 60.0), d_in, r_ica, 0.85 * r_ica, t_w)
    ends["BA"] = b.curve(np.array([cx, cy - 20.0 * s, 0.0]), ring(180.0), up, r_ba, r_ba, 0.0, wiggle=0.5)

    # Circle of Willis: A1 segments and the anterior communicating artery, posterior communicating, P1.
    def ring_segment(a: float, c: float, r0: float, r1: float, wiggle: float = 0.3) -> None:
        b.curve(ring(a), ring(c), _unit(ring(c) - ring(a)), r0, r1, 15.0, wiggle)

    r_pcom = max(0.6 * rs, STOP_RADIUS_MM)
    for side in (1, -1):
        ring_segment(side * 60.0, side * 15.0, 1.0 * rs, 0.9 * rs)  # A1
        ring_segment(side * 60.0, side * 150.0, r_pcom, r_pcom)  # posterior communicating
        ring_segment(180.0, side * 150.0, 1.0 * rs, 1.0 * rs)  # P1
    ring_segment(15.0, -15.0, 0.7 * rs, 0.7 * rs, 0.1)  # anterior communicating

    n_pts = max(300, int(round(TERRITORY_POINTS_FULL * scale**3)))
    pts = territory_points(brain, fov_mm, n_pts, rng)
    share_ba = r_ba**3 / (r_ba**3 + 2 * r_ica**3)
    post = pts[:, 1] < np.quantile(pts[:, 1], share_ba)
    ant = pts[~post]
    width = brain.semi_axes_mm[0]
    for side, name in ((1, "R"), (-1, "L")):
        terr = ant[(ant[:, 0] - cx) * side >= 0]
        medial = np.abs(terr[:, 0] - cx) < 0.3 * width
        f_aca = medial.mean()
        d_end, t_end = ends[name]
        r_top = 0.85 * r_ica  # carotid terminus, after the ophthalmic and communicating branches
        if 0.05 < f_aca < 0.95:  # anterior cerebral from the ring's front, middle cerebral from the carotid end
            b.grow(ring(side * 15.0), up, r_top * f_aca ** (1 / 3), terr[medial], t_end + 10.0)
            b.grow(ring(side * 60.0), d_end, r_top * (1 - f_aca) ** (1 / 3), terr[~medial], t_end)
        else:
            b.grow(ring(side * 60.0), d_end, r_top, terr, t_end)
    terr = pts[post]
    for side in (1, -1):  # posterior cerebral arteries from the basilar tip
        half = terr[(terr[:, 0] - cx) * side >= 0]
        if len(half):
            b.grow(ring(side * 150.0), up, r_ba * (len(half) / len(terr)) ** (1 / 3), half, ends["BA"][1] + 8.0)
    return b.result()


#: Unlabelled background vessels: radius range (mm; below the labelled tree's stop radius, as the small
#: perforators and cortical twigs a rater leaves out), length range (mm) and the share of wider, slow-flow
#: venous segments (radius ×3).
BACKGROUND_RADIUS_MM = (0.15, 0.35)
BACKGROUND_LENGTH_MM = (4.0, 20.0)
BACKGROUND_VEIN_SHARE = 0.25
BACKGROUND_STEP_MM = 0.35


def background_vessels(
    brain_mask: np.ndarray, spacing: tuple[float, float, float], per_cm3: float, rng: np.random.Generator
) -> tuple[Centrelines, np.ndarray]:
    """Short smooth random curves inside the brain; returns centrelines and each point's curve index.

    Each curve starts at a random brain voxel, runs along a direction that turns smoothly (a random walk of
    the tangent), and has one radius; all curves are built at once as arrays (no per-curve Python loop).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    inside = np.flatnonzero(brain_mask)
    n = int(rng.poisson(per_cm3 * len(inside) * float(np.prod(sp)) / 1000.0)) if len(inside) else 0
    if n == 0:
        empty = np.zeros((0, 3), np.float32)
        return Centrelines(empty, np.zeros(0, np.float32), np.zeros(0, np.float32)), np.zeros(0, np.int64)
    start = np.stack(np.unravel_index(rng.choice(inside, n), brain_mask.shape), -1) * sp
    steps = int(np.ceil(BACKGROUND_LENGTH_MM[1] / BACKGROUND_STEP_MM))
    length = rng.uniform(*BACKGROUND_LENGTH_MM, n)
    turn = np.cumsum(rng.normal(0.0, 0.15, (n, steps, 3)), axis=1) + rng.standard_normal((n, 1, 3))
    tangent = turn / np.linalg.norm(turn, axis=-1, keepdims=True)
    pts = start[:, None, :] + np.cumsum(tangent * BACKGROUND_STEP_MM, axis=1)
    keep = np.arange(steps)[None, :] * BACKGROUND_STEP_MM < length[:, None]
    vox = np.rint(pts / sp).astype(np.int64)  # a curve that leaves the brain stops being drawn there
    within = np.all((vox >= 0) & (vox < np.asarray(brain_mask.shape)), axis=-1)
    vox = np.where(within[..., None], vox, 0)
    keep &= within & brain_mask[vox[..., 0], vox[..., 1], vox[..., 2]]
    vein = rng.random(n) < BACKGROUND_VEIN_SHARE
    radius = rng.uniform(*BACKGROUND_RADIUS_MM, n) * np.where(vein, 3.0, 1.0)
    curve = np.broadcast_to(np.arange(n)[:, None], keep.shape)[keep]
    lines = Centrelines(pts[keep].astype(np.float32), radius[curve].astype(np.float32), np.zeros(len(curve), np.float32))
    return lines, curve.astype(np.int64)
