"""`tofgan synthesize`: a GAN checkpoint → a synthetic patch store (images in [-1, 1], binary labels).

The store's manifest records where the pairs came from (checkpoint path and sha256, class, generator
settings), how they were made (n, seed, label encoding and threshold) and when, so a segmentation run
trained on the store can be traced back to one GAN checkpoint. Same checkpoint + seed + device → the
same store: the noise is drawn from a CPU generator seeded with `seed` and the generator runs in eval mode.

The pairs are streamed to disk batch by batch (`write_streamed_store`): memory stays bounded by the batch
size whatever `n_samples` is (a paper-scale 3D set, 11,750 pairs of 128×128×64, is 57 GiB), and the store is
bit for bit the one an in-memory `GANModule.generate` + `write_patch_store` would give.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from datamodules.patch_store import file_sha256


def _privacy_record(checkpoint: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """The checkpoint's top-level `privacy` dict as JSON data (tensors → numbers); None without one."""
    privacy = checkpoint.get("privacy")
    if privacy is None:
        return None
    if not isinstance(privacy, dict):
        raise ValueError(f"{where}: 'privacy' must be a dict, got {type(privacy).__name__}")
    return json.loads(json.dumps(privacy, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_streamed_store(root: Path, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, manifest: dict,
                         overwrite: bool = False) -> Path:
    """Write (images, labels) batches totalling n pairs as a patch store, appending each batch to the .npy files.

    Plain file writes, not a memmap: written pages are not mapped into this process, so its resident memory does
    not grow with n. Checked as `write_patch_store` checks (finite images, binary labels) with the statistics
    accumulated per batch; written into a temporary folder and renamed into place, so a failure leaves nothing.
    """
    import shutil

    from datamodules.patch_store import _base_manifest, _write_meta  # the store's own manifest writers
    from datamodules.store_folders import check_store_target, make_tmp_dir, publish
    from datamodules.store_stats import ArrayStats, nonfinite_message

    check_store_target(root, overwrite)
    stats, pos, patch = (ArrayStats("images"), ArrayStats("labels")), 0, ()
    tmp = make_tmp_dir(root)
    try:
        with open(tmp / "images.npy", "wb") as f_img, open(tmp / "labels.npy", "wb") as f_lab:
            for images, labels in batches:
                img, lab = images.numpy().astype(np.float32, copy=False), labels.numpy().astype(np.uint8, copy=False)
                if pos == 0:
                    patch = img.shape[2:]
                    for f, dtype in ((f_img, np.float32), (f_lab, np.uint8)):
                        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                                 "fortran_order": False, "shape": (n, 1, *patch)})  # fmt: skip
                if img.shape[1:] != (1, *patch) or lab.shape != img.shape or pos + len(img) > n:
                    raise ValueError(f"{root}: batch of {img.shape}/{lab.shape} at pair {pos} does not fit ({n}, 1, {patch})")
                if stats[0].add(pos, img)[2]:
                    raise ValueError(nonfinite_message(root, "images", stats[0].blocks[-1]))
                if ((lab != 0) & (lab != 1)).any():
                    raise ValueError(f"{root}: labels are not binary {{0,1}} (threshold them before writing)")
                stats[1].add(pos, lab)
                img.tofile(f_img), lab.tofile(f_lab)
                pos += len(img)
        if pos != n:
            raise ValueError(f"{root}: {pos} pairs were generated, {n} announced")
        _write_meta(tmp, np.full(n, "synthetic"), np.full((n, 3), -1, np.int64), _base_manifest(manifest, n, patch), stats)
        publish(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def resolve_gan_class(checkpoint: dict[str, Any], module_class: str | None, where: str) -> type:
    """The GANModule subclass to load: `module_class`, else the checkpoint's `gan_class` / `_class_path`.

    Only classes of the suite's packages (or an allow-list the user extends, `lightning_modules.checkpoints`)
    are imported. Importing it here also satisfies Lightning, which loads CLI checkpoints only into imported
    subclasses.
    """
    from lightning_modules.checkpoints import import_class
    from lightning_modules.gan_base import GANModule

    hparams = checkpoint.get("hyper_parameters", {})
    class_path = module_class or checkpoint.get("gan_class") or hparams.get("_class_path")
    if not class_path:
        raise ValueError(f"{where}: checkpoint names no GAN class (no 'gan_class'); pass module_class=...")
    return import_class(class_path, where, "GAN class", base=GANModule)


def synthesize(
    checkpoint: str,
    out_dir: str,
    n_samples: int = 41000,
    batch_size: int = 500,
    seed: int = 0,
    module_class: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    wandb_group: str | None = None,
) -> Path:
    """Writes `n_samples` generated pairs as a patch store in `out_dir` (+ `preview.png`); returns the folder.

    The checkpoint is read as data only (`lightning_modules.checkpoints.safe_load`: no pickled objects, class
    paths only from the suite's packages or $TOFGAN_ALLOWED_CLASS_PATHS). Its `privacy` record (written by the
    differentially private GANs) is copied into the store manifest; `"privacy": null` means no formal guarantee.

    Args:
        checkpoint: a GAN checkpoint written by Lightning (any `GANModule` subclass), read as data only: pickled
            objects are refused, and the classes it names must be in the suite's packages or in the
            comma-separated module prefixes of $TOFGAN_ALLOWED_CLASS_PATHS.
        out_dir: the store folder to create: absent, empty, or (with `overwrite`) an existing patch store.
            Any other folder is refused before anything is generated, so no file of yours is deleted.
        n_samples: pairs to generate (paper: 41,000 = the real training patch count).
        batch_size: generator batch size (memory only; the result does not depend on it).
        seed: noise seed.
        module_class: dotted class path overriding the checkpoint's `gan_class` (suite packages only).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ….
        overwrite: replace an existing patch store at `out_dir`.
        wandb_group: also log a W&B run (job type "synthesize": generator, privacy, preview grid) in this group;
            its files go beside the store, in `<parent of out_dir>/wandb`. None: no W&B run.
    """
    from callbacks.sample_grid import pair_grid
    from datamodules.patch_store import PatchStore, check_store_target
    from lightning_modules.checkpoints import load_checkpoint_dict

    ckpt_path = Path(checkpoint)
    if n_samples < 1:
        raise ValueError(f"{ckpt_path}: n_samples must be ≥ 1, got {n_samples}")
    check_store_target(Path(out_dir), overwrite)  # before the (long) generation
    raw = load_checkpoint_dict(ckpt_path, "GAN checkpoint")
    cls = resolve_gan_class(raw, module_class, str(ckpt_path))
    privacy = _privacy_record(raw, ckpt_path)
    del raw
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model = cls.load_from_checkpoint(ckpt_path, map_location=dev, weights_only=True).to(dev)
    hparams = dict(model.hparams)
    manifest = {
        "kind": "synthetic",
        "source_checkpoint": str(ckpt_path.resolve()),
        "source_checkpoint_sha256": file_sha256(ckpt_path),
        "gan_class": f"{cls.__module__}.{cls.__qualname__}",
        "n_samples": n_samples,
        "seed": seed,
        "device": str(dev),
        "image_range": [-1.0, 1.0],
        "label_encoding": model.label_encoding,
        "label_threshold": model.label_threshold,
        "latent_dim": model.latent_dim,
        "generator": hparams.get("generator"),
        "generator_ema": hparams.get("generator_ema"),  # decay of the weight average sampled from; None: raw weights
        "privacy": privacy,
        "synthesized_at": datetime.now(timezone.utc).isoformat(),
    }
    batches = model.generate_batches(n_samples, batch_size=batch_size, seed=seed, progress=True)
    store = PatchStore(write_streamed_store(Path(out_dir), batches, n_samples, manifest, overwrite=overwrite))
    first = torch.from_numpy(np.array(store.images[:16])), torch.from_numpy(np.array(store.labels[:16]))
    preview = pair_grid(torch.cat([first[0], first[1].float()], dim=1), threshold=0.5)
    from matplotlib.image import imsave

    imsave(store.root / "preview.png", preview, cmap="gray", vmin=0.0, vmax=1.0)
    if wandb_group is not None:
        from callbacks.wandb_run import log_synthesis_run

        log_synthesis_run(store.root, manifest, wandb_group)
    return store.root
