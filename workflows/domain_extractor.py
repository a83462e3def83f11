"""A feature extractor for FID/PRD that needs no download: the encoder of a half U-Net trained on the real
training patients (SPEC §5: pretrained Inception/MedicalNet weights cannot be fetched on our machines).

Recipe (once per cohort and split; the GAN runs that are compared must share one extractor file):

    from workflows.domain_extractor import train_domain_extractor
    ckpt = train_domain_extractor("outputs/extractors", experiment="cpu_unet.yaml")        # CPU, minutes
    ckpt = train_domain_extractor("outputs/extractors", experiment="kossen2021_unet.yaml")  # paper size, GPU

It runs `tofgan fit` on the experiment (same cohort and patient split as the GAN configs, so the extractor
never sees the GAN's held-out test patients), keeps the epoch of best validation DSC, and copies it to
`<out_dir>/domain_extractor-<sha256[:12]>.ckpt` beside a JSON card (sha256, experiment, source run, DSC,
layer, feature width). The content hash in the name versions it: a retrained extractor is a new file, and
every FID records the sha256 of the weights that produced it. Then point the evaluation callback at it:
`extractor_checkpoint: outputs/extractors/domain_extractor-<hash>.ckpt` (configs/callbacks/gan_evaluation.yaml).

Features: deepest encoder block (bottleneck, e.g. 512 channels at paper width) global-average-pooled, input
z-scored per patch as the segmentation module does. Unlike Inception features these are vessel-aware but
cohort-specific: FIDs are comparable only between runs evaluated with the same extractor file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from torch import nn

from networks.feature_extractors import SegmentationEncoderFeatures, sha256_file

CARD_SUFFIX = ".json"


def default_layer_name(net: nn.Module) -> str:
    """The deepest encoder block of a `HalfUNet2D` ("encoders.4" at paper depth)."""
    encoders = getattr(net, "encoders", None)
    if isinstance(encoders, nn.ModuleList) and len(encoders):
        return f"encoders.{len(encoders) - 1}"
    raise ValueError(f"domain extractor: no default layer for {type(net).__name__}; pass layer_name")


def net_from_checkpoint(checkpoint: str | Path) -> nn.Module:
    """The (untrained) segmentation network described by a SegmentationModule checkpoint's hyper-parameters:
    the `{"class_path", "init_args"}` dict LightningCLI stores. The file is read as data only and the class
    path must lie in the suite's packages (`lightning_modules.checkpoints`), checked before any import."""
    from lightning_modules.checkpoints import load_checkpoint_dict
    from lightning_modules.gan_base import build_network

    path = Path(checkpoint).expanduser()
    ckpt = load_checkpoint_dict(path, "domain extractor checkpoint (a SegmentationModule checkpoint)")
    hparams = ckpt.get("hyper_parameters")
    spec = hparams.get("net") if isinstance(hparams, Mapping) else None
    if isinstance(spec, Mapping) and "class_path" in spec:
        return build_network(dict(spec), "net")
    raise ValueError(f"domain extractor checkpoint {path}: hyper_parameters hold no 'net' class_path dict "
                     "(not a SegmentationModule checkpoint written by `tofgan fit`?)")


def domain_extractor(checkpoint: str, layer_name: str | None = None, channel: int = 0) -> SegmentationEncoderFeatures:
    """`SegmentationEncoderFeatures` over a segmentation checkpoint: the net is rebuilt from the checkpoint's
    hyper-parameters, so configs only name the file."""
    net = net_from_checkpoint(checkpoint)
    return SegmentationEncoderFeatures(str(checkpoint), net, layer_name=layer_name or default_layer_name(net),
                                       channel=channel)


def _run_dir(cli: Any) -> Path:
    from callbacks.run_manifest import run_dir

    return run_dir(cli.trainer)


def publish_extractor(checkpoint: str | Path, out_dir: str | Path, info: Mapping[str, Any] | None = None,
                      name: str = "domain_extractor") -> Path:
    """Copy a segmentation checkpoint to `<out_dir>/<name>-<sha256[:12]>.ckpt` with its JSON card."""
    src = Path(checkpoint)
    digest = sha256_file(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"{name}-{digest[:12]}.ckpt"
    if not dst.is_file():
        shutil.copy2(src, dst)
    extractor = domain_extractor(str(dst))
    card = {"checkpoint": dst.name, "sha256": digest, "source": str(src.resolve()), "extractor": extractor.name,
            "layer_name": extractor.layer_name, "num_features": extractor.num_features,
            "input_mapping": extractor.input_mapping, "created": datetime.now(timezone.utc).isoformat(), **(info or {})}
    dst.with_suffix(CARD_SUFFIX).write_text(json.dumps(card, indent=2, default=str))
    return dst


def train_domain_extractor(
    out_dir: str,
    experiment: str = "cpu_unet.yaml",
    monitor: str = "val/dsc",
    mode: Literal["max", "min"] = "max",
    max_epochs: int | None = None,
    replace: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Fit the segmentation experiment, keep its best epoch by `monitor` (validation DSC, the papers' model
    selection; a ModelCheckpoint of its own, whatever the trainer config keeps) and publish it as a versioned
    extractor file; returns that file.

    Args:
        out_dir: where the extractor file and its card go. The training run is logged where the experiment's
            logger puts it (`outputs/` by default; with the CSV logger add `--trainer.logger.init_args.save_dir`).
        experiment: a `configs/experiment/` segmentation file (or a path); its `# compose:` line is followed.
        monitor / mode: the logged key that picks the epoch.
        max_epochs: override of the experiment's epochs (None: as configured).
        replace: fragment swaps, e.g. {"trainer": "trainer/cpu.yaml"} (`workflows.compose.experiment_args`).
        extra_args: further `tofgan fit` arguments (e.g. `--data.init_args.cohort_dir ...`).
    """
    from cli import main
    from workflows.compose import experiment_args

    args = ["fit", *experiment_args(experiment, replace),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.monitor={monitor}", f"--trainer.callbacks.mode={mode}",
            "--trainer.callbacks.filename=extractor-{epoch}", "--trainer.callbacks.save_top_k=1",
            "--trainer.callbacks.save_weights_only=true"]
    if max_epochs is not None:
        args += ["--trainer.max_epochs", str(max_epochs)]
    cli = main([*args, *extra_args])
    best = next((cb for cb in cli.trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == monitor), None)
    if best is None or not best.best_model_path:
        raise RuntimeError(f"train_domain_extractor: {experiment} saved no checkpoint selected by {monitor}")
    score = best.best_model_score
    return publish_extractor(best.best_model_path, out_dir, {
        "experiment": str(experiment), "run_dir": str(_run_dir(cli)), "monitor": monitor, "mode": mode,
        "best_score": float(score) if score is not None else None})
