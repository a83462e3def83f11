"""On-the-fly augmentation of U-Net training patches, as Livne et al. 2019 (and so Kossen et al. 2021) did it.

The authors used Keras' `ImageDataGenerator(rotation_range=30, shear_range=20, vertical_flip=True)`: every
patch gets a uniform rotation in ±30°, a uniform shear angle in ±20° along one axis and, with probability
½, a flip of the row axis. Here the same with MONAI dictionary transforms: one `RandAffined` (always
applied, prob 1, as Keras does) with bilinear interpolation for the image and nearest for the label, so
labels stay exactly {0, 1}, then `RandFlipd` on spatial axis 0 (the row axis of a patch, Keras' "vertical").
MONAI's shear parameter is the off-diagonal factor of the affine, so a shear *angle* θ becomes tan θ.
Out-of-patch samples repeat the border (`padding_mode="border"`, Keras' default fill_mode "nearest").

Randomness: the transform's own `RandomState`, seeded from `seed`; in a DataLoader worker it is re-seeded
from (seed, worker seed), and the worker seed comes from the loader's seeded generator, so workers differ
from each other and from epoch to epoch (non-persistent workers) while a run stays reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandFlipd
from torch.utils.data import Dataset, get_worker_info

KEYS = ("image", "label")
ROTATION_DEG = 30.0
SHEAR_DEG = 20.0


def paper_augmentation(
    rotation_deg: float = ROTATION_DEG,
    shear_deg: float = SHEAR_DEG,
    flip_prob: float = 0.5,
    seed: int = 0,
) -> Compose:
    """Rotation ±`rotation_deg`, shear ±`shear_deg` (one axis), flip of axis 0 with `flip_prob`; 2D patches."""
    affine = RandAffined(
        keys=KEYS,
        prob=1.0,
        rotate_range=(math.radians(rotation_deg),),
        shear_range=(math.tan(math.radians(shear_deg)), 0.0),
        mode=("bilinear", "nearest"),
        padding_mode="border",
    )
    flip = RandFlipd(keys=KEYS, prob=flip_prob, spatial_axis=0)
    transform = Compose([affine, flip])
    transform.set_random_state(seed=seed)
    return transform


def _plain(x: Any) -> torch.Tensor:
    """MetaTensor → plain float tensor: default collate and the U-Net need no affine metadata."""
    return torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x, dtype=torch.float32)


class AugmentedDataset(Dataset):
    """Wraps a patch dataset ({"image", "label"} (1, H, W)) and augments every item on access."""

    def __init__(self, base: Dataset, seed: int = 0, rotation_deg: float = ROTATION_DEG,
                 shear_deg: float = SHEAR_DEG, flip_prob: float = 0.5) -> None:
        self.base = base
        self.seed = int(seed)
        self.transform = paper_augmentation(rotation_deg, shear_deg, flip_prob, seed=self.seed)
        self._worker_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _reseed_in_worker(self) -> None:
        info = get_worker_info()
        if info is None:
            return
        key = (info.id, info.seed)
        if key != self._worker_key:
            state = np.random.SeedSequence([self.seed, info.seed & 0xFFFFFFFF, info.seed >> 32]).generate_state(1)
            self.transform.set_random_state(seed=int(state[0]))
            self._worker_key = key

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`key`: an index, or (epoch, index) from `datamodules.sampling.EpochShuffleSampler(keyed=True)`; then
        the augmentation is drawn from (seed, epoch, index) alone, so a resumed run (even mid-epoch, with any
        number of workers) augments every patch as the uninterrupted run did."""
        if isinstance(key, tuple):
            epoch, index = key
            state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)
            self.transform.set_random_state(seed=int(state[0]))
        else:
            index = key
            self._reseed_in_worker()
        item = dict(self.base[index])
        label = item["label"]
        out = self.transform({k: item[k] for k in KEYS})
        item["image"] = _plain(out["image"])
        item["label"] = _plain(out["label"]).to(label.dtype) if isinstance(label, torch.Tensor) else _plain(out["label"])
        return item
