"""Patient-level splits (never patch-level: patches of one patient in two splits would leak).

Defaults from SPEC §2:
- PEGASUS-like, 2D papers: 41 train / 11 val / 14 test (`PEGASUS_SPLIT`); 3D paper: 47 / 12 / 13.
- 1000Plus-like transfer learning: train subsets of 1, 3, ..., 15 patients, 10 val, 40 test.

One seeded permutation of the sorted ids is cut as [test | val | train...], so test and val do not depend
on n_train and a larger n_train only appends patients: train subsets are nested, and a transfer-learning
sweep over n_train adds patients instead of redrawing them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PEGASUS_SPLIT = (41, 11, 14)
PEGASUS_3D_SPLIT = (47, 12, 13)
THOUSANDPLUS_TRAIN_SUBSETS = (1, 3, 5, 7, 9, 11, 13, 15)
THOUSANDPLUS_VAL, THOUSANDPLUS_TEST = 10, 40


def split_patients(ids: Sequence[str], n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[str]]:
    """Deterministic split by seed; `n_train=-1` takes every patient left after val and test."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"split_patients: duplicate patient ids {dup[:5]}")
    if n_val < 0 or n_test < 0 or n_train < -1:
        raise ValueError(f"split_patients: negative split size (train {n_train}, val {n_val}, test {n_test})")
    n_rest = len(ids) - n_val - n_test
    if n_train == -1:
        n_train = n_rest
    if n_train + n_val + n_test > len(ids) or n_rest < 0:
        raise ValueError(
            f"cohort has too few patients: {len(ids)} found, but the split needs {n_train} train + {n_val} val + "
            f"{n_test} test = {n_train + n_val + n_test}; lower n_train/n_val/n_test or add patients")
    order_sorted = sorted(ids)  # input order must not matter
    order = [order_sorted[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    test, val = order[:n_test], order[n_test:n_test + n_val]
    train = order[n_test + n_val:n_test + n_val + n_train]
    return {"train": train, "val": val, "test": test}
