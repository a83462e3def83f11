"""Stable per-patient random generators: a patient's volume depends only on (profile, patient id, seed)."""

from __future__ import annotations

import hashlib

import numpy as np


def patient_rng(profile: str, patient_id: str, seed: int) -> np.random.Generator:
    """SHA-256 of the key, not Python's hash(), which is salted per process and would break determinism."""
    digest = hashlib.sha256(f"tofgan-sim|{profile}|{patient_id}|{int(seed)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))
