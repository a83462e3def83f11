"""`tofgan synthesize`: a GAN checkpoint → a synthetic patch store (images in [-1, 1], binary labels).

The store's manifest records where the pairs came from (checkpoint path and sha256, class, generator
settings), how they were made (n, seed, label encoding and threshold) and when, so a segmentation run
trained on the store can be traced back to one GAN checkpoint. Same checkpoint + seed + device → the
same store: the noise is drawn from a CPU generator seeded with `seed` and the generator runs in eval mode.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_gan_class(checkpoint: dict[str, Any], module_class: str | None, where: str) -> type:
    """The GANModule subclass to load: `module_class`, else the checkpoint's `gan_class` / `_class_path`.

    Importing it here also satisfies Lightning, which loads CLI checkpoints only into imported subclasses.
    """
    from lightning_modules.gan_base import GANModule, import_object

    hparams = checkpoint.get("hyper_parameters", {})
    class_path = module_class or checkpoint.get("gan_class") or hparams.get("_class_path")
    if not class_path:
        raise ValueError(f"{where}: checkpoint names no GAN class (no 'gan_class'); pass module_class=...")
    cls = import_object(class_path)
    if not (isinstance(cls, type) and issubclass(cls, GANModule)):
        raise TypeError(f"{where}: {class_path} is not a lightning_modules.gan_base.GANModule subclass")
    return cls


def synthesize(
    checkpoint: str,
    out_dir: str,
    n_samples: int = 41000,
    batch_size: int = 500,
    seed: int = 0,
    module_class: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    weights_only: bool = True,
) -> Path:
    """Writes `n_samples` generated pairs as a patch store in `out_dir` (+ `preview.png`); returns the folder.

    Args:
        checkpoint: a GAN checkpoint written by Lightning (any `GANModule` subclass).
        out_dir: the store folder to create.
        n_samples: pairs to generate (paper: 41,000 = the real training patch count).
        batch_size: generator batch size (memory only; the result does not depend on it).
        seed: noise seed.
        module_class: dotted class path overriding the checkpoint's `gan_class`.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ….
        overwrite: replace an existing store at `out_dir`.
        weights_only: load the checkpoint without unpickling arbitrary objects (suite checkpoints hold only
            plain data); set False only for checkpoints you trust.
    """
    from callbacks.sample_grid import pair_grid
    from datamodules.patch_store import write_patch_store

    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
    if n_samples < 1:
        raise ValueError(f"{ckpt_path}: n_samples must be ≥ 1, got {n_samples}")
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only)
    cls = resolve_gan_class(raw, module_class, str(ckpt_path))
    del raw
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model = cls.load_from_checkpoint(ckpt_path, map_location=dev, weights_only=weights_only).to(dev)
    images, labels = model.generate(n_samples, batch_size=batch_size, seed=seed, progress=True)
    hparams = dict(model.hparams)
    manifest = {
        "kind": "synthetic",
        "source_checkpoint": str(ckpt_path.resolve()),
        "source_checkpoint_sha256": _sha256(ckpt_path),
        "gan_class": f"{cls.__module__}.{cls.__qualname__}",
        "n_samples": n_samples,
        "seed": seed,
        "device": str(dev),
        "image_range": [-1.0, 1.0],
        "label_encoding": model.label_encoding,
        "label_threshold": model.label_threshold,
        "latent_dim": model.latent_dim,
        "generator": hparams.get("generator"),
        "synthesized_at": datetime.now(timezone.utc).isoformat(),
    }
    store = write_patch_store(out_dir, images.numpy(), labels.numpy(), manifest, overwrite=overwrite)
    preview = pair_grid(torch.cat([images[:16], labels[:16].float()], dim=1), threshold=0.5)
    from matplotlib.image import imsave

    imsave(store.root / "preview.png", preview, cmap="gray", vmin=0.0, vmax=1.0)
    return store.root
