"""Patch extraction (SPEC §2): 2D axial patches (vessel-centred + random in-brain) and 3D patches
(systematic grid + vessel-centred), with per-patient deterministic centres.

Patches are cut around a centre `c` as `volume[c - s//2 : c - s//2 + s]` per axis; parts falling outside the
volume are filled (image: the volume minimum, label: 0), so every patch is full size and centres near the
border are allowed. A patch larger than the volume along any axis is refused (`check_patch_fits`). A 2D patch
is a 3D cut of depth 1 along z, squeezed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from datamodules.cohort import CohortError, PatientVolume

log = logging.getLogger(__name__)

KIND_GRID, KIND_VESSEL, KIND_RANDOM = 0, 1, 2


@dataclass(frozen=True)
class PatchSettings:
    """Everything that determines a patient's patches; its dict is part of the patch-cache key."""

    patch_size: tuple[int, ...] = (96, 96)
    n_vessel: int = 500
    n_random: int = 500
    grid: tuple[int, int, int] = (3, 3, 2)  # 3D only: patches per axis of the systematic grid
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must have 2 (2D) or 3 (3D) positive entries, got {self.patch_size}")
        if len(self.grid) != 3 or min(self.grid) < 0:
            raise ValueError(f"grid must have 3 entries >= 0, got {self.grid}")
        if self.n_vessel < 0 or self.n_random < 0:
            raise ValueError("n_vessel and n_random must be >= 0")

    @property
    def is_3d(self) -> bool:
        return len(self.patch_size) == 3

    @property
    def cut_size(self) -> tuple[int, int, int]:
        """Size of the cut in (x, y, z); 2D patches are one slice deep."""
        return self.patch_size if self.is_3d else (*self.patch_size, 1)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"], d["grid"] = list(self.patch_size), list(self.grid)
        if not self.is_3d:
            d.pop("grid")  # irrelevant in 2D: must not change the cache key
        return d


@dataclass
class PatchSet:
    centres: np.ndarray  # (N, 3) int64, (x, y, z) in original volume coordinates
    images: np.ndarray  # (N, 1, *patch) float32
    labels: np.ndarray  # (N, 1, *patch) uint8
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # (N,) KIND_*

    def __len__(self) -> int:
        return len(self.centres)


def patient_rng(patient_id: str, seed: int) -> np.random.Generator:
    """Generator seeded by a stable hash of (patient_id, seed): Python's hash() is salted per process."""
    digest = hashlib.sha256(f"{patient_id}\x00{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def cut_patch(volume: np.ndarray, centre: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """Cut a `size` block centred at `centre` from a 3D array, filling outside parts with `fill`."""
    start = np.asarray(centre) - np.asarray(size) // 2
    stop = start + np.asarray(size)
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, volume.shape)
    if min(hi - lo) <= 0:  # entirely outside the volume
        return np.full(size, fill, dtype=volume.dtype)
    block = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if np.array_equal(lo, start) and np.array_equal(hi, stop):
        return block.copy()
    # np.pad with a constant handles the border case; interior cuts above stay a plain copy.
    pad = [(int(lo[i] - start[i]), int(stop[i] - hi[i])) for i in range(3)]
    return np.pad(block, pad, mode="constant", constant_values=fill)


def grid_centres(shape: tuple[int, ...], size: tuple[int, int, int], grid: tuple[int, int, int]) -> np.ndarray:
    """Centres of a systematic grid whose patches span each axis from first to last voxel.

    Patch starts are spread evenly over [0, L - s]; the union covers the axis when g * s >= L.
    """
    axes = []
    for length, s, g in zip(shape, size, grid):
        if g == 0:
            return np.zeros((0, 3), np.int64)
        if g * s < length:
            log.warning("grid of %d patches of size %d cannot cover an axis of length %d", g, s, length)
        if g == 1 or length <= s:
            starts = np.array([(length - s) // 2])
        else:
            starts = np.round(np.linspace(0, length - s, g)).astype(np.int64)
        axes.append(np.unique(starts + s // 2))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1).astype(np.int64)


def _sample_flat(rng: np.random.Generator, candidates: np.ndarray | int, n: int, exclude: set[int],
                 what: str, patient_id: str) -> np.ndarray:
    """Draw up to n distinct flat indices from candidates (array or range size) not in `exclude`."""
    n_cand = candidates if isinstance(candidates, int) else len(candidates)
    if n == 0 or n_cand == 0:
        if n > 0:
            log.warning("patient %s: no %s candidates, 0 of %d patches taken", patient_id, what, n)
        return np.zeros(0, np.int64)
    # Without replacement, at most len(exclude) of the draws can be excluded, so this many always suffice.
    draw = rng.choice(n_cand, size=min(n_cand, n + len(exclude)), replace=False)
    flat = draw if isinstance(candidates, int) else candidates[draw]
    if exclude:
        flat = flat[~np.isin(flat, np.fromiter(exclude, np.int64, len(exclude)))]
    if len(flat) < n:
        log.warning("patient %s: only %d distinct %s centres available, %d requested; taking all",
                    patient_id, len(flat), what, n)
    return flat[:n].astype(np.int64)


def choose_centres(vol: PatientVolume, settings: PatchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 3) and kinds (N,): 3D grid first, then vessel-centred, then random; none repeated."""
    rng = patient_rng(vol.patient_id, settings.seed)
    shape = vol.label.shape
    taken: set[int] = set()
    parts, kinds = [], []
    if settings.is_3d:
        grid = grid_centres(shape, settings.cut_size, settings.grid)
        parts.append(grid)
        kinds.append(np.full(len(grid), KIND_GRID, np.int8))
        taken.update(np.ravel_multi_index(grid.T, shape).tolist())
    vessel_flat = np.flatnonzero(vol.label)
    flat = _sample_flat(rng, vessel_flat, settings.n_vessel, taken, "vessel", vol.patient_id)
    taken.update(flat.tolist())
    parts.append(np.stack(np.unravel_index(flat, shape), axis=1))
    kinds.append(np.full(len(flat), KIND_VESSEL, np.int8))
    if settings.n_random:
        cand: np.ndarray | int = np.flatnonzero(vol.brain_mask) if vol.brain_mask is not None else int(np.prod(shape))
        flat = _sample_flat(rng, cand, settings.n_random, taken, "random", vol.patient_id)
        parts.append(np.stack(np.unravel_index(flat, shape), axis=1))
        kinds.append(np.full(len(flat), KIND_RANDOM, np.int8))
    return np.concatenate(parts).astype(np.int64), np.concatenate(kinds)


def check_patch_fits(vol: PatientVolume, settings: PatchSettings) -> None:
    """Refuse a patch larger than the volume: its patches would be largely fill, and training on padding
    happens without any other visible sign."""
    too_big = [f"{axis} {s} > {n}" for axis, s, n in zip("xyz", settings.cut_size, vol.image.shape) if s > n]
    if too_big:
        raise CohortError(f"{vol.image_path}: patch size {list(settings.patch_size)} is larger than the volume "
                          f"{list(vol.image.shape)} of patient {vol.patient_id!r} ({', '.join(too_big)}); "
                          "choose a patch_size that fits every volume")


def extract_patches(vol: PatientVolume, settings: PatchSettings) -> PatchSet:
    """All patches of one patient, deterministic in (patient_id, settings.seed)."""
    check_patch_fits(vol, settings)
    centres, kinds = choose_centres(vol, settings)
    size = settings.cut_size
    n = len(centres)
    images = np.empty((n, 1, *settings.patch_size), np.float32)
    labels = np.empty((n, 1, *settings.patch_size), np.uint8)
    fill = float(vol.image.min())
    for i, c in enumerate(centres):
        img = cut_patch(vol.image, c, size, fill)
        lab = cut_patch(vol.label, c, size, 0)
        images[i, 0] = img if settings.is_3d else img[..., 0]
        labels[i, 0] = lab if settings.is_3d else lab[..., 0]
    return PatchSet(centres, images, labels, kinds)
