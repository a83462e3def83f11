"""Patient-level DP (shared/notes/dp-privacy.md §5, §10.10): per-patient clipping bounds a patient's influence."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from datamodules.dp_data import PoissonBatchSampler
from tests.dp_helpers import TinyDPData, expected_update, fit, flat_params, sgd, spy_critic_inputs, tiny_dpwgan


def _patient_step(scale: dict[int, float] | None = None, sigma: float = 0.0):
    module = tiny_dpwgan(noise_multiplier=sigma, critic_optimizer=sgd())
    critic0 = copy.deepcopy(module.critic)
    data = TinyDPData(unit="patient", n_patients=6, per_patient=8, patients_per_step=3, patches_per_patient=4,
                      seed=3, scale=scale)  # fmt: skip
    seen = spy_critic_inputs(module)
    fit(module, data, max_steps=1)
    return flat_params(critic0) - flat_params(module.critic), critic0, seen, module, data


def test_patient_update_is_the_clipped_per_patient_mean_gradient() -> None:
    update, critic0, seen, module, data = _patient_step()
    patients = seen["patients"][0]
    assert len(torch.unique(patients)) >= 2 and torch.bincount(patients).max() <= 4  # k patches per sampled patient
    want = expected_update(critic0, seen["real"][0], seen["fake"][0], 1.0, 3.0, patients)
    assert torch.allclose(update, want, atol=1e-5)
    assert module.accountant.history == [(0.0, 3 / 6, 1)]  # q = m / P


def test_one_patient_scaled_by_1000_moves_the_update_by_at_most_2c_over_m() -> None:
    base, _, seen, _, _ = _patient_step()
    chosen = int(seen["patients"][0][0])
    moved, _, seen2, _, _ = _patient_step(scale={chosen: 1000.0})
    assert torch.equal(seen["patients"][0], seen2["patients"][0])  # same draw, same fakes
    # replacing one patient's data changes its clipped row by ≤ 2C; the sum is divided by m = 3
    assert float((moved - base).norm()) <= 2 * 1.0 / 3 + 1e-5
    assert float((moved - base).norm()) > 1e-3  # the patient did matter


def test_patient_sampler_inclusion_rate_is_m_over_p_and_k_patches_each() -> None:
    groups = [np.arange(10 * u, 10 * u + 10) for u in range(20)]
    sampler = PoissonBatchSampler(groups, 5 / 20, steps=400, per_group=3, seed=1)
    included = np.zeros(20)
    for batch in sampler:
        patients = np.asarray(batch) // 10
        counts = np.bincount(patients, minlength=20)
        assert set(counts[counts > 0]) <= {3}
        included += counts > 0
    assert included.mean() / 400 == pytest.approx(0.25, abs=0.02)


def test_sampler_draws_differ_between_epochs_and_shards_partition_the_records() -> None:
    groups = [np.asarray([i]) for i in range(100)]
    sampler = PoissonBatchSampler(groups, 0.1, steps=5, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # a resumed epoch does not replay another epoch's subsets
    shards = [PoissonBatchSampler(groups, 0.1, steps=1, seed=0, rank=r, world_size=2).groups for r in (0, 1)]
    ids = sorted(int(g[0]) for shard in shards for g in shard)
    assert ids == list(range(100))
