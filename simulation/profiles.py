"""Study profiles: the acquisition grid and TOF appearance of each simulated study.

The two profiles differ in grid (spacing, shape), intensity scale, tissue contrast, noise, bias field and
multi-slab ripple, so a model trained on one and tested on the other meets a genuine domain shift, as
PEGASUS → 1000Plus does in the papers (SPEC §2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyProfile:
    """Grid and appearance of one study; intensities are relative to a large, fully inflowing artery (1.0).

    `vessel_tissue_ratio` is the acceptance window for mean(image in vessels) / mean(brain tissue outside
    vessels); tests check rendered volumes against it, so it documents what the appearance model promises.
    """

    name: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    vessel_intensity: float  # scanner units of a large proximal artery
    white_matter: float  # TOF: short-T1 white matter slightly brighter than grey matter
    grey_matter: float
    csf: float
    bone: float
    fat: float  # scalp fat is bright in TOF (short T1)
    air: float
    tissue_texture: float  # relative std of smooth within-tissue variation
    noise_sigma: float  # Gaussian std of each complex channel, relative to vessel intensity
    bias_strength: float  # std of the log bias field
    n_slabs: int  # multi-slab (MOTSA) acquisitions darken slab boundaries ("venetian blind")
    slab_ripple: float
    inflow_decay: float  # share of vessel signal lost to saturation along the flow path
    inflow_length_mm: float
    small_vessel_dimming: float  # slow flow in small vessels saturates more
    vessel_tissue_ratio: tuple[float, float]
    tortuosity: float  # relative amplitude of centreline wiggles (older stroke cohorts: more tortuous)


PROFILES: dict[str, StudyProfile] = {
    "pegasus": StudyProfile(
        name="pegasus",
        spacing=(0.5, 0.5, 0.7),
        shape=(312, 384, 127),
        vessel_intensity=420.0,
        white_matter=0.21,
        grey_matter=0.18,
        csf=0.07,
        bone=0.03,
        fat=0.28,
        air=0.01,
        tissue_texture=0.05,
        noise_sigma=0.022,
        bias_strength=0.12,
        n_slabs=1,
        slab_ripple=0.0,
        inflow_decay=0.30,
        inflow_length_mm=120.0,
        small_vessel_dimming=0.25,
        vessel_tissue_ratio=(2.6, 5.5),
        tortuosity=0.06,
    ),
    "1000plus": StudyProfile(
        name="1000plus",
        spacing=(0.5, 0.7, 0.7),
        shape=(384, 268, 127),
        vessel_intensity=1150.0,
        white_matter=0.17,
        grey_matter=0.15,
        csf=0.05,
        bone=0.02,
        fat=0.32,
        air=0.015,
        tissue_texture=0.07,
        noise_sigma=0.035,
        bias_strength=0.2,
        n_slabs=4,
        slab_ripple=0.07,
        inflow_decay=0.40,
        inflow_length_mm=100.0,
        small_vessel_dimming=0.3,
        vessel_tissue_ratio=(2.8, 6.5),
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
