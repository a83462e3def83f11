"""`tofgan audit`: does a GAN's synthetic set reveal who was in its training cohort? (membership inference)

Who plays which part (patients of the GAN run's own split, `datamodules.splits`; never patches of one patient
on two sides):
- members: the training patients' patches (what the GAN was trained on);
- non-members: the test patients' patches — never used for training or for model selection;
- attacker reference: the validation patients' patches, the "other held-out patients" that calibration, the
  MC radius and DOMIAS need. They never trained the GAN, but they may have chosen its epoch (FID selection):
  the report says so.

Attacks (`metrics.membership`) run in pixel space (image + label) and, with `extractor`, in the domain
extractor's embedding; the critic score (white-box) runs when the checkpoint holds the critic. Chance is
calibrated by a reference run: the same attacks with real held-out patients in place of the synthetic set
(half of the validation patients stand in for it, the other half stays the reference), or with the samples of
a generator trained on other patients (`reference_store`). For DP generators the (ε, δ) region is drawn on
the ROC. Optionally (`canaries`) the GAN-level one-run DP audit (`metrics.dp_audit`) scores the canary patches
the run trained with (`--data.init_args.canaries`; the steps are in `audit`'s docstring).

Outputs in `out_dir`: audit.json, audit.md, roc.png, nearest_neighbours.png (+ a W&B run, job_type "audit").
The checkpoint is read as data only (`lightning_modules.checkpoints`, as `workflows.synthesize` loads it).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from metrics.membership import evaluate_attack, membership_scores, per_patient, pixel_features, roc_curve
from workflows.audit_report import leakage_summary, write_outputs

ROLES = {
    "members": "training patients (the GAN was trained on their patches)",
    "nonmembers": "test patients: never used for training or model selection",
    "reference": ("validation patients (attacker reference): never trained the GAN, but may have been used for model"
                  " selection (e.g. the epoch of lowest validation FID)"),
}


# ----------------------------------------------------------------------------- model and data
def load_gan(checkpoint: Path, device: torch.device) -> tuple[Any, dict[str, Any] | None]:
    """The GAN module (eval mode) and the checkpoint's privacy record, loaded as `workflows.synthesize` does."""
    from lightning_modules.checkpoints import load_checkpoint_dict
    from workflows.synthesize import resolve_gan_class

    raw = load_checkpoint_dict(checkpoint, "GAN checkpoint")
    cls = resolve_gan_class(raw, None, str(checkpoint))
    privacy = raw.get("privacy")
    if privacy is not None and not isinstance(privacy, dict):
        raise ValueError(f"{checkpoint}: 'privacy' must be a dict, got {type(privacy).__name__}")
    del raw
    model = cls.load_from_checkpoint(checkpoint, map_location=device, weights_only=True).to(device).eval()
    return model, privacy


def run_config(checkpoint: Path, data_config: str | None) -> Path:
    """The GAN run's merged config.yaml (LightningCLI saves it in the run folder above `checkpoints/`)."""
    if data_config is not None:
        return Path(data_config)
    for folder in list(checkpoint.resolve().parents)[:3]:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"{checkpoint}: no config.yaml of its run found above it; pass data_config=<the run's config.yaml>")


def build_datamodule(config: Path, overrides: dict[str, Any] | None) -> Any:
    """The run's GAN data module from its config's `data:` section (suite classes only), cohort and stores ready."""
    from datamodules.gan_data import GANPatchDataModule
    from lightning_modules.checkpoints import import_class

    spec = (yaml.safe_load(config.read_text()) or {}).get("data")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{config}: no `data: {{class_path, init_args}}` section (not a GAN run's config.yaml?)")
    cls = import_class(spec["class_path"], config, "data class", base=GANPatchDataModule)
    dm = cls(**{**spec.get("init_args", {}), "num_workers": 0, **(overrides or {})})
    dm.prepare_data()
    dm.setup("test")
    manifest = config.parent / "run_manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("data", {}).get("splits")
        if recorded and recorded != dm.splits:
            raise ValueError(f"{manifest}: the run trained on another patient split than {config} gives now;"
                             " members and non-members would be mixed up (check cohort_dir, n_train/val/test, split_seed)")
    if dm.test_store is None or not dm.splits["test"]:
        raise ValueError(f"{config}: the data has no test patients: non-members are needed (set n_test > 0)")
    return dm


def split_patches(dm: Any, split: str, max_per_patient: int | None, seed: int) -> dict[str, Any]:
    """{"images" (N,1,…) f32 as the GAN saw them, "labels" (N,1,…) u8, "pids" (N,)} of one split's patients."""
    from datamodules.base import PatchDataset

    store = dm.test_store if split == "test" else dm.store
    index = store.indices_for(dm.splits[split])
    if max_per_patient is not None:
        rng = np.random.default_rng(seed)
        pids = store.patient_ids[index]
        index = np.concatenate([rng.permutation(index[pids == p])[:max_per_patient] for p in np.unique(pids)] or [index])
        index = np.sort(index)
    ds = PatchDataset(store.root, index, dm.normalization)
    items = [ds[i] for i in range(len(ds))]
    if not items:
        return {"images": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.uint8), "pids": np.array([], str)}
    return {"images": torch.stack([it["image"] for it in items]),
            "labels": torch.stack([it["label"] for it in items]).to(torch.uint8),
            "pids": np.asarray(store.patient_ids[index], dtype=str)}


def synthetic_set(model: Any, store: str | None, n: int, sha256: str, seed: int, batch_size: int) -> dict[str, Any]:
    """Samples of `model` (seeded), or the first n pairs of a synthetic store made from the same checkpoint."""
    if store is None:
        images, labels = model.generate(n, batch_size=batch_size, seed=seed)
        return {"images": images, "labels": labels, "source": f"generated, seed {seed}"}
    from datamodules.patch_store import PatchStore

    s = PatchStore(store)
    made_by = s.manifest.get("source_checkpoint_sha256")
    if made_by != sha256:
        raise ValueError(f"{store}: synthetic store made from checkpoint sha256 {str(made_by)[:12]}…, not the audited"
                         f" {sha256[:12]}…")
    n = min(n, len(s))
    return {"images": torch.from_numpy(np.array(s.images[:n])), "labels": torch.from_numpy(np.array(s.labels[:n])),
            "source": f"store {Path(store).name}, first {n}"}


@torch.no_grad()
def critic_scores(model: Any, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> np.ndarray:
    """D(image, label) with the real labels encoded as the GAN encodes them (white-box LOGAN score)."""
    lab = labels.float() * 2 - 1 if model.label_encoding == "symmetric" else labels.float()
    pairs = torch.cat([images.float(), lab], dim=1)
    out = [model.critic(pairs[i:i + batch_size].to(model.device)).float().flatten().cpu()
           for i in range(0, len(pairs), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def extractor_features(extractor: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([extractor(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).float()


# ----------------------------------------------------------------------------- attacks
def feature_spaces(sets: dict[str, dict[str, Any]], extractor: str | None, batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """{space: {set name: (N, F) features}} for "pixels" and, with an extractor file, "extractor"."""
    spaces = {"pixels": {k: pixel_features(v["images"], v["labels"]) for k, v in sets.items()}}
    if extractor is not None:
        from workflows.domain_extractor import domain_extractor

        ext = domain_extractor(extractor)
        spaces["extractor"] = {k: extractor_features(ext, v["images"], batch_size) for k, v in sets.items()}
    return spaces


def standin_split(reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the reference patches that stand in for the synthetic set / stay the attacker reference in the
    real-vs-real run: patients alternate (sorted ids), so neither half shares a patient with the other."""
    ids = np.unique(reference["pids"])
    standin = np.isin(reference["pids"], ids[0::2])
    return standin, ~standin


def score_attack(s_in: np.ndarray, s_out: np.ndarray, pids: dict[str, np.ndarray], n_boot: int, seed: int
                 ) -> dict[str, Any]:
    """`evaluate_attack` plus the exact ROC curves of both levels under "roc" (plotted, not written to JSON)."""
    result: dict[str, Any] = evaluate_attack(s_in, pids["members"], s_out, pids["nonmembers"], n_boot, seed)
    p_in, p_out = per_patient(s_in, pids["members"])[1], per_patient(s_out, pids["nonmembers"])[1]
    result["roc"] = {"patch": roc_curve(s_in, s_out), "patient": roc_curve(p_in, p_out)}
    return result


def run_attacks(spaces: dict[str, dict[str, torch.Tensor]], synthetic: str, reference: str | None,
                pids: dict[str, np.ndarray], n_boot: int, seed: int, mask: dict[str, np.ndarray] | None = None
                ) -> dict[str, dict[str, Any]]:
    """{"space/attack": {"patch": …, "patient": …}} with `synthetic` (a set name) as the attacked synthetic set."""
    results = {}
    for space, feats in spaces.items():
        take = lambda name: feats[name][torch.from_numpy(mask[name])] if mask and name in mask else feats[name]  # noqa: E731
        ref = take(reference) if reference is not None else None
        for attack, (s_in, s_out) in membership_scores(feats["members"], feats["nonmembers"], take(synthetic), ref).items():
            results[f"{space}/{attack}"] = score_attack(s_in, s_out, pids, n_boot, seed)
    return results


def trained_canaries(config: Path, canaries: str) -> dict[str, Any] | None:
    """The canary record (file, sha256, counts) of the run's manifest, checked against the `canaries` file before
    any attack runs; None when the run has no manifest (nothing to check). Raises when the manifest shows the run
    trained without canaries or with another file (the bound would be meaningless)."""
    from networks.feature_extractors import sha256_file

    manifest = config.parent / "run_manifest.json"
    if not manifest.is_file():
        return None
    record = json.loads(manifest.read_text()).get("data", {}).get("canaries")
    if record is None:
        raise ValueError(f"{manifest}: this run trained without canaries (no data.canaries record); train with"
                         " --data.init_args.canaries <file> to audit with them")
    sha = sha256_file(Path(canaries))
    if record.get("sha256") != sha:
        raise ValueError(f"{canaries}: sha256 {sha[:12]}… is not the canary file the run trained with"
                         f" ({record.get('file')}, {str(record.get('sha256'))[:12]}…, {manifest})")
    return record


def canary_audit(canaries: str, synthetic: dict[str, Any], privacy: dict[str, Any] | None, normalization: str = "none",
                 trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """GAN-level one-run audit: canary patches (npz: images, labels, included), normalised as the training loader
    normalised them, scored by −distance to the nearest synthetic sample; ε lower bound against the claimed ε (∞
    without a guarantee). `trained`: the run manifest's canary record (`trained_canaries`), None if unchecked."""
    from datamodules.gan_data import CanaryPatches
    from metrics.dp_audit import epsilon_lower_bound
    from metrics.membership import distance_summary

    patches = CanaryPatches(canaries, normalization, only_included=False)  # type: ignore[arg-type]
    items = [patches[i] for i in range(len(patches))]
    images, labels = torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])
    d, _ = distance_summary(pixel_features(images, labels), pixel_features(synthetic["images"], synthetic["labels"]))
    claimed = float(privacy["epsilon"]) if privacy and privacy.get("epsilon") is not None else float("inf")
    delta = float(privacy.get("delta", 1e-5)) if privacy else 1e-5
    result = epsilon_lower_bound(-d, patches.included, claimed, delta).to_dict()
    return {**result, "canaries_sha256": patches.sha256,
            "checked_against_run_manifest": trained is not None, "score": "-distance to the nearest synthetic pair (pixels)"}


# ----------------------------------------------------------------------------- the tool
def audit(
    checkpoint: str,
    out_dir: str,
    data_config: str | None = None,
    data_overrides: dict[str, Any] | None = None,
    synthetic_store: str | None = None,
    n_synthetic: int | None = None,
    max_patches_per_patient: int | None = 200,
    extractor: str | None = None,
    critic: bool = True,
    reference_store: str | None = None,
    canaries: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    wandb: bool = True,
) -> Path:
    """Membership-inference audit of a GAN checkpoint; writes audit.json/.md, roc.png, nearest_neighbours.png.

    Args:
        checkpoint: the GAN checkpoint (any `GANModule`, 2D or 3D; DP checkpoints carry a `privacy` record).
        out_dir: folder for the report (created; existing report files are replaced).
        data_config: the GAN run's config.yaml (its `data:` section gives cohort, split and patch settings);
            default: the config.yaml LightningCLI saved in the checkpoint's run folder.
        data_overrides: init_args replacing the config's (e.g. {"cohort_dir": …} when the cohort moved).
        synthetic_store: audit this store's pairs (made from `checkpoint`) instead of generating new ones.
        n_synthetic: synthetic pairs to attack with; default: as many as member patches.
        max_patches_per_patient: patches per patient (seeded subsample; None: all). Memory and time scale with it.
        extractor: domain-extractor checkpoint (`tofgan domain-extractor`) for the embedding-space attacks.
        critic: run the white-box critic-score attack (the checkpoint holds the critic).
        reference_store: synthetic store of a generator trained on other patients, for the chance-level
            reference run; default: real held-out patients (half the validation patients) stand in.
        canaries: the canary file the run trained with (npz: images, labels, included): adds the one-run ε lower
            bound (`metrics.dp_audit`, Steinke et al. 2023) as "canary_audit". The whole procedure:
            1. `metrics.dp_audit.write_canary_set` writes the file (`tofgan canaries --path F --n_canaries 1000
               --patch_size [96,96]`), each canary marked "included" with probability ½; keep it private;
            2. `tofgan fit ... --data.init_args.canaries F` trains with the included ones (the DP data module
               counts each as a Poisson unit: q and the default δ use N + included); the run manifest records the
               file's sha256 and counts;
            3. `tofgan audit --checkpoint C --canaries F`: refused when the run manifest records another file or
               no canaries. The bound exceeds the claimed ε only if the DP implementation is broken (violation).
        n_boot: bootstrap resamples (patient-cluster) per CI.
        seed: seed of subsampling, generation and bootstrap.
        batch_size: batch of generation / critic / extractor passes.
        device: "auto" (CUDA when available), "cpu", "cuda", …
        wandb: log the report to a W&B run (job_type "audit"; offline unless logged in).
    """
    from networks.feature_extractors import sha256_file

    ckpt, out = Path(checkpoint), Path(out_dir)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    sha = sha256_file(ckpt)
    model, privacy = load_gan(ckpt, dev)
    config = run_config(ckpt, data_config)
    trained = trained_canaries(config, canaries) if canaries is not None else None  # refuse early, before the attacks
    dm = build_datamodule(config, data_overrides)
    sets = {name: split_patches(dm, split, max_patches_per_patient, seed)
            for name, split in (("members", "train"), ("nonmembers", "test"), ("reference", "val"))}
    n_syn = n_synthetic or len(sets["members"]["images"])
    sets["synthetic"] = synthetic_set(model, synthetic_store, n_syn, sha, seed, batch_size)
    if reference_store is not None:
        from datamodules.patch_store import PatchStore

        ref_store = PatchStore(reference_store)
        sets["reference_generator"] = {"images": torch.from_numpy(np.array(ref_store.images[:n_syn])),
                                       "labels": torch.from_numpy(np.array(ref_store.labels[:n_syn]))}
    pids = {k: sets[k]["pids"] for k in ("members", "nonmembers")}
    has_reference = len(sets["reference"]["images"]) > 1
    spaces = feature_spaces(sets, extractor, batch_size)
    results = run_attacks(spaces, "synthetic", "reference" if has_reference else None, pids, n_boot, seed)
    if critic and getattr(model, "critic", None) is not None:
        s_in, s_out = (critic_scores(model, sets[k]["images"], sets[k]["labels"], batch_size) for k in pids)
        results["critic/score"] = score_attack(s_in, s_out, pids, n_boot, seed)
    if reference_store is not None:
        ref_kind = f"generator trained on other patients ({Path(reference_store).name})"
        reference = run_attacks(spaces, "reference_generator", "reference" if has_reference else None, pids, n_boot, seed)
    else:
        standin, rest = standin_split(sets["reference"])
        two_sides = np.unique(sets["reference"]["pids"]).size >= 2
        ref_kind = "real held-out patients (half of the validation patients) in place of the synthetic set"
        mask = {"reference": rest, "reference_standin": standin}
        for space in spaces.values():
            space["reference_standin"] = space["reference"]
        reference = run_attacks(spaces, "reference_standin", "reference" if two_sides else None, pids, n_boot, seed,
                                mask) if standin.any() else {}
    report = {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": sha,
        "gan_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "privacy": privacy,
        "roles": ROLES,
        "counts": {k: {"patients": int(np.unique(v["pids"]).size), "patches": int(len(v["pids"]))}
                   for k, v in sets.items() if "pids" in v},
        "n_synthetic": int(len(sets["synthetic"]["images"])),
        "synthetic_source": sets["synthetic"]["source"],
        "max_patches_per_patient": max_patches_per_patient,
        "feature_spaces": list(spaces),
        "extractor": Path(extractor).name if extractor else None,
        "patient_aggregation": "mean patch score per patient",
        "ci": f"95 % percentile, patient-cluster bootstrap, {n_boot} resamples",
        "results": results,
        "reference_run": {"kind": ref_kind, "results": reference},
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(),
    }
    report["leakage"] = leakage_summary(results, reference)
    if canaries is not None:
        report["canary_audit"] = canary_audit(canaries, sets["synthetic"], privacy, dm.normalization, trained)
    write_outputs(report, sets, spaces["pixels"], out, wandb)
    return out
