"""Study profiles: the acquisition grid and TOF appearance of each simulated study.

The two profiles differ in grid (spacing, shape), intensity scale, tissue contrast, noise, bias field and
multi-slab ripple, so a model trained on one and tested on the other meets a genuine domain shift, as
PEGASUS → 1000Plus does in the papers (SPEC §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StudyProfile:
    """Grid and appearance of one study; intensities are relative to a large, fully inflowing artery (1.0).

    Each appearance field says where its value comes from: "issue 16" means the measurement of a real
    TOF-MRA scan in issue 16's table (metrics/realism.py defines each measure; the value was tuned until
    the simulated cohort measures it within ±30 %), "literature" a published property of TOF imaging.
    `vessel_tissue_ratio` is the acceptance window for mean(image in vessels) / mean(brain tissue outside
    vessels); tests check rendered volumes against it, so it documents what the appearance model promises.
    """

    name: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    vessel_intensity: float  # scanner units of a large proximal artery
    # Tissue levels: set by issue 16's vessel/tissue median ratio 5.2; TOF: short-T1 white matter slightly
    # brighter than grey matter, CSF dark (literature: background suppression of stationary tissue).
    white_matter: float
    grey_matter: float
    csf: float
    bone: float
    fat: float  # scalp fat, short T1, not saturated: bright in TOF (literature); the all-vessel false positives
    marrow: float  # skull marrow (diploë), fatty, bright for the same reason (literature)
    air: float
    tissue_texture: float  # std of a multiplicative ~2 mm tissue texture; issue 16: 1–3 mm texture 15–17 %
    noise_sigma: float  # std of each complex noise channel after reconstruction; issue 16: ≈2 % of tissue
    # Gaussian σ (mm) of the reconstruction kernel (zero-filled k-space interpolation) that blurs signal and
    # noise alike; issue 16: neighbour noise correlation 0.75 at 0.5 mm, 0.89 at 0.3 mm (exp(-d²/4σ²) → σ ≈ 0.47),
    # vessel edge 10–90 % width 1.07 mm.
    recon_blur_mm: float
    bias_strength: float  # std of the smooth log bias field (coil shading); issue 16: 95th/5th smoothed tissue 1.85
    bias_scale_mm: float  # correlation length of that field (receive-coil profiles vary over a few cm)
    tone_ramp: float  # log-intensity rise from slab bottom to top (TONE ramped flip angle; literature)
    n_slabs: int  # multi-slab (MOTSA) acquisitions darken slab boundaries ("venetian blind")
    slab_ripple: float
    inflow_decay: float  # share of vessel signal lost to saturation along the flow path
    inflow_length_mm: float
    # std of a smooth (≈10 mm) log-brightness field along the tree (flow and in-plane saturation differ between
    # segments; literature), limited by issue 16's brightest / median vessel 1.67
    inflow_variation: float
    # signal at the wall / on the axis: laminar (parabolic) flow, slow blood near the wall saturates (literature);
    # with the partial volume of small vessels it sets issue 16's brightest / median 1.67
    lumen_wall_signal: float
    small_vessel_dimming: float  # slow flow in small vessels saturates more
    # faint unlabelled arterioles and venules: real TOF shows many below the label's size (issue 16: "a single
    # threshold cannot separate small vessels from tissue"); density and brightness set so the oracle threshold
    # DSC of rendered real labels is ≤ 0.85
    background_vessels_per_cm3: float
    background_vessel_signal: tuple[float, float]  # their brightness range (relative to a large artery)
    vessel_tissue_ratio: tuple[float, float]
    tortuosity: float  # relative amplitude of centreline wiggles (older stroke cohorts: more tortuous)


#: Names of the study profiles below (a Literal so command-line help lists them as the allowed values).
ProfileName = Literal["pegasus", "1000plus"]

PROFILES: dict[str, StudyProfile] = {
    "pegasus": StudyProfile(
        name="pegasus",
        spacing=(0.5, 0.5, 0.7),
        shape=(312, 384, 127),
        vessel_intensity=420.0,
        white_matter=0.101,
        grey_matter=0.086,
        csf=0.033,
        bone=0.015,
        fat=0.3,
        marrow=0.22,
        air=0.0,
        tissue_texture=0.28,
        noise_sigma=0.0017,
        recon_blur_mm=0.45,
        bias_strength=0.22,
        bias_scale_mm=35.0,
        tone_ramp=0.25,
        n_slabs=1,
        slab_ripple=0.0,
        inflow_decay=0.15,
        inflow_length_mm=120.0,
        inflow_variation=0.07,
        lumen_wall_signal=0.95,
        small_vessel_dimming=0.05,
        background_vessels_per_cm3=1.2,
        background_vessel_signal=(0.15, 0.7),
        vessel_tissue_ratio=(3.5, 7.0),
        tortuosity=0.06,
    ),
    "1000plus": StudyProfile(
        name="1000plus",
        spacing=(0.5, 0.7, 0.7),
        shape=(384, 268, 127),
        vessel_intensity=1150.0,
        white_matter=0.095,
        grey_matter=0.084,
        csf=0.028,
        bone=0.01,
        fat=0.32,
        marrow=0.24,
        air=0.0,
        tissue_texture=0.3,
        noise_sigma=0.0019,
        recon_blur_mm=0.47,
        bias_strength=0.25,
        bias_scale_mm=30.0,
        tone_ramp=0.3,
        n_slabs=4,
        slab_ripple=0.07,
        inflow_decay=0.2,
        inflow_length_mm=100.0,
        inflow_variation=0.09,
        lumen_wall_signal=0.92,
        small_vessel_dimming=0.1,
        background_vessels_per_cm3=1.4,
        background_vessel_signal=(0.12, 0.65),
        vessel_tissue_ratio=(3.5, 7.5),
        tortuosity=0.08,
    ),
}


def get_profile(profile: str | StudyProfile) -> StudyProfile:
    """Accept a profile or its name, so callers and configs can pass either."""
    if isinstance(profile, StudyProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown study profile {profile!r}; known: {sorted(PROFILES)}") from None


def scaled_shape(profile: StudyProfile, scale: float) -> tuple[int, int, int]:
    """Field of view shrunk by `scale` at unchanged spacing (small demo/test volumes)."""
    if not 0.05 <= scale <= 1.5:
        raise ValueError(f"scale must lie in [0.05, 1.5], got {scale}")
    return tuple(max(8, int(round(n * scale))) for n in profile.shape)  # type: ignore[return-value]
