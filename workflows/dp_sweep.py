"""`tofgan dp-sweep`: the DP paper's figure (DSC vs ε, Kossen et al. 2022) with valid accounting, per patch and per patient.

For every row — a DP-WGAN at a σ or a target ε, per patch or per patient, from scratch or fine-tuned from a GAN
pre-trained on a public (simulated) cohort — the GAN is fitted `repeats` times (seeds seed, seed + 1, …); each fit's
last `candidates` epoch snapshots are each synthesised and used to train the U-Net (synthetic only), and the snapshot
whose U-Net has the best validation DSC is that fit's model ("selected per model over epochs by downstream utility").
That U-Net is tested on the real test patients. Reference rows (repeated alike): the U-Net on real data, the non-private GAN (σ = ∞, from scratch and/or
fine-tuned) and the public pre-trained GAN. Each row is reported as mean ± 95 % t-interval over its repeats
(workflows.dp_sweep_report).

Selection uses the validation patients: it spends nothing on the training patients (every snapshot is covered by
the accountant's composition), but it is outside the guarantee for the validation patients unless they are public.
Each trained model is one release; picking among σ rows on private data would cost extra (Papernot & Steinke 2022).

Resumable: `out_dir/compare_state.json` (workflows.compare.Ledger) records every finished step of every repeat.
Outputs: dp_sweep.csv (rows), dp_sweep_runs.csv (every repeat), README.md (table), dp_sweep.png (DSC vs ε with 95 %
error bars, patch and patient level in one figure), runs/, synthetic/.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workflows.compare import Ledger, fit_gan, unet_data_args
from workflows.compare_report import slug
from workflows.dp_sweep_report import VESSELS, write_outputs
from workflows.grid_search import Select, run_fit, run_test


def sweep_rows(patch_epsilons: list[float], patch_sigmas: list[float], patient_epsilons: list[float],
               pretrained_epsilons: list[float], non_dp: bool,
               pretrained_patch_epsilons: Sequence[float] = (), non_dp_pretrained: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """{name, unit, pretrained, sigma, target_epsilon} of every GAN row, in figure order."""
    rows: list[dict[str, Any]] = []
    if non_dp:
        rows.append({"name": "non-DP (σ=∞)", "unit": "patch", "pretrained": False, "sigma": math.inf, "target_epsilon": None})
    if non_dp_pretrained:
        rows.append({"name": "non-DP (σ=∞) pretrained", "unit": "patch", "pretrained": True, "sigma": math.inf, "target_epsilon": None})
    rows += [{"name": f"patch σ={s:g}", "unit": "patch", "pretrained": False, "sigma": s, "target_epsilon": None} for s in patch_sigmas]
    rows += [{"name": f"patch ε={e:g}", "unit": "patch", "pretrained": False, "sigma": None, "target_epsilon": e} for e in patch_epsilons]
    rows += [{"name": f"patch ε={e:g} pretrained", "unit": "patch", "pretrained": True, "sigma": None, "target_epsilon": e}
             for e in pretrained_patch_epsilons]  # fmt: skip
    rows += [{"name": f"patient ε={e:g}", "unit": "patient", "pretrained": False, "sigma": None, "target_epsilon": e}
             for e in patient_epsilons]  # fmt: skip
    rows += [{"name": f"patient ε={e:g} pretrained", "unit": "patient", "pretrained": True, "sigma": None, "target_epsilon": e}
             for e in pretrained_epsilons]  # fmt: skip
    return rows


def privacy_args(row: dict[str, Any], pretrained: str | None) -> list[str]:
    sigma = row["sigma"]
    args = ["--model.init_args.noise_multiplier", "null" if sigma is None else (".inf" if math.isinf(sigma) else str(sigma))]
    if row["target_epsilon"] is not None:
        args += ["--model.init_args.target_epsilon", str(row["target_epsilon"])]
    return args + (["--model.init_args.pretrained", pretrained] if row["pretrained"] and pretrained else [])


def snapshots(run_dir: str, candidates: int) -> list[Path]:
    """The last `candidates` weights-only epoch snapshots (configs/trainer/cpu.yaml: checkpoints/epoch=N.ckpt); a run
    shorter than the snapshot interval (e.g. a one-epoch DP fine-tuning) has only its final checkpoint, last.ckpt."""
    found = sorted(Path(run_dir).glob("checkpoints/epoch=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    found = found or sorted(Path(run_dir).glob("checkpoints/last.ckpt"))
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no epoch=N.ckpt snapshots to select from")
    return found[-candidates:]


def snapshot_privacy(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt, map_location="cpu", weights_only=True).get("privacy") or {}


def select_snapshot(ctx: dict[str, Any], name: str, gan: dict[str, Any]) -> dict[str, Any]:
    """Synthesise each candidate, train a U-Net on it, keep the candidate with the best validation DSC."""
    from workflows.synthesize import synthesize

    best: dict[str, Any] | None = None
    for ckpt in snapshots(gan["run_dir"], ctx["candidates"]):
        key = f"cand/{tagged(ctx, name)}/{ckpt.stem}"
        cand = ctx["ledger"].get(key)
        if cand is None:
            store = synthesize(str(ckpt), str(ctx["out"] / "synthetic" / tagged(ctx, name) / ckpt.stem), n_samples=ctx["n_synthetic"],
                               seed=ctx["seed"], overwrite=True, wandb_group=ctx["group"])  # fmt: skip
            run = f"unet-{tagged(ctx, name)}-{ckpt.stem.replace('=', '')}"
            fit = run_fit(ctx["unet"], run, ctx["out"], [*ctx["unet_args"], *unet_data_args("synthetic", str(store))],
                          ctx["group"], ctx["select"])  # fmt: skip
            cand = ctx["ledger"].record(key, {"gan_checkpoint": str(ckpt), "store": str(store), "run": run,
                                              "unet_checkpoint": str(fit.checkpoint), "val_dsc": fit.score,
                                              "privacy": snapshot_privacy(ckpt)})  # fmt: skip
        if best is None or (cand["val_dsc"] or -1) > (best["val_dsc"] or -1):
            best = cand
    assert best is not None
    return best


def test_unet(ctx: dict[str, Any], run: str, ckpt: str, args: list[str]) -> dict[str, Any]:
    report = ctx["out"] / "runs" / run / "test"
    return run_test(ctx["unet"], f"{run}-test", Path(ckpt), ctx["out"], report, [*args, "--data.init_args.test_split", "test"],
                    ctx["group"], False)  # fmt: skip


def result(name: str, row: dict[str, Any], summary: dict[str, Any], privacy: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {"row": name, "unit": row.get("unit"), "pretrained": row.get("pretrained"), "sigma": privacy.get("noise_multiplier", row.get("sigma")),
           "target_epsilon": row.get("target_epsilon"), "epsilon": privacy.get("epsilon"), "epsilon_prv": privacy.get("epsilon_prv"),
           "delta": privacy.get("delta"), "steps": privacy.get("steps"), "sample_rate": privacy.get("sample_rate"), **extra}  # fmt: skip
    for v in VESSELS:
        res = summary["results"].get(v, {})
        out[f"dsc_{v}_mean"], out[f"dsc_{v}_std"] = res.get("dsc_mean"), res.get("dsc_std")
    return out


def dp_sweep(
    out_dir: str = "outputs/dp_sweep",
    experiment: str = "cpu_dp_wgan.yaml",
    patient_experiment: str = "cpu_dp_wgan_patient.yaml",
    pretrain_experiment: str = "cpu_dp_wgan_public_pretrain.yaml",
    unet: str = "cpu_unet.yaml",
    patch_epsilons: list[float] = [1.0, 3.0, 7.0],  # noqa: B006 - read only
    patch_sigmas: list[float] = [],  # noqa: B006
    patient_epsilons: list[float] = [7.0, 30.0],  # noqa: B006
    pretrained_epsilons: list[float] = [7.0, 30.0],  # noqa: B006
    pretrained_patch_epsilons: list[float] = [],  # noqa: B006
    non_dp: bool = True,
    non_dp_pretrained: bool = False,
    public_only: bool = True,
    candidates: int = 2,
    n_synthetic: int = 2000,
    select: Select = "best",
    seed: int = 0,
    gan_args: list[str] | None = None,
    pretrained_args: list[str] | None = None,
    pretrain_args: list[str] | None = None,
    unet_args: list[str] | None = None,
    group: str | None = None,
    wandb: bool = True,
    resume: bool = True,
    repeats: int = 1,
) -> Path:
    """Runs the ε sweep and returns the folder holding README.md, dp_sweep.csv and dp_sweep.png.

    Args:
        out_dir: runs, synthetic stores, state file and report.
        experiment: DP-WGAN experiment at patch level on the private cohort. Paper scale:
            kossen2022_dp_wgan_sigma1.yaml (its σ is replaced per row) with kossen2021_unet.yaml.
        patient_experiment: DP-WGAN experiment at patient level on the private cohort.
        pretrain_experiment: non-private GAN on a PUBLIC (simulated) cohort whose last checkpoint starts the
            "pretrained" rows (same networks as `experiment`).
        unet: U-Net experiment on the private cohort (same cohort, split and patch size as the GANs).
        patch_epsilons: target ε of the patch-level rows (σ chosen for the planned steps, training stops at the budget).
        patch_sigmas: patch-level rows at a fixed σ (the paper's list).
        patient_epsilons: target ε of the patient-level rows trained from scratch.
        pretrained_epsilons: target ε of the patient-level rows fine-tuned from the public pre-trained GAN.
        pretrained_patch_epsilons: target ε of the patch-level rows fine-tuned from the public pre-trained GAN.
        non_dp: add the σ = ∞ reference row (from scratch).
        non_dp_pretrained: add a σ = ∞ row fine-tuned from the public pre-training like the pretrained rows
            (pretrained_args too): what the fine-tuning recipe gives without privacy.
        public_only: with pretrained rows, add the pre-trained GAN itself (never saw the private cohort: ε = 0).
        candidates: last epoch snapshots of each GAN tried by downstream utility.
        n_synthetic: synthetic pairs per candidate.
        select: "best" or "last" epoch of each U-Net.
        seed: `--seed_everything` of every run and the synthesis seed.
        gan_args: more CLI arguments for every GAN run.
        pretrained_args: more CLI arguments for the DP fine-tuning rows only, after gan_args (e.g. a smaller
            learning rate or fewer epochs, so that the noisy fine-tuning does not undo the public pre-training).
        pretrain_args: more CLI arguments for the public pre-training run only, after gan_args.
        unet_args: more CLI arguments for every U-Net run.
        group: W&B group of every run (default "dp-sweep-" + the out_dir name).
        wandb: False for CSV logs only.
        resume: skip the steps the state file records as finished.
        repeats: runs per row (the references included), repeat r with seed `seed + r` (and fresh DP noise and
            Poisson draws); the report gives the mean and a 95 % t-interval over the repeats. The public pre-training
            is made once. Raising it on a finished sweep runs only the new repeats.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if repeats < 1:
        raise ValueError(f"workflows/dp_sweep.py: repeats must be ≥ 1, got {repeats}")
    rows = sweep_rows(patch_epsilons, patch_sigmas, patient_epsilons, pretrained_epsilons, non_dp, pretrained_patch_epsilons,
                      non_dp_pretrained)  # fmt: skip
    settings = {"experiment": experiment, "patient_experiment": patient_experiment, "pretrain_experiment": pretrain_experiment,
                "unet": unet, "candidates": candidates, "n_synthetic": n_synthetic, "select": select, "seed": seed,
                "gan_args": gan_args or [], "unet_args": unet_args or []}  # fmt: skip
    # only when given, so that a state file written before these options existed still resumes (repeats is not a
    # setting: more repeats only add steps)
    settings.update({k: v for k, v in (("pretrained_args", pretrained_args), ("pretrain_args", pretrain_args)) if v})
    ledger = Ledger(out, settings, resume)
    base = {"out": out, "ledger": ledger, "group": (group or f"dp-sweep-{out.name}") if wandb else None, "unet": unet,
            "candidates": candidates, "n_synthetic": n_synthetic, "select": select}  # fmt: skip
    pre_args = ["--seed_everything", str(seed), *(gan_args or []), *(pretrain_args or [])]
    needs_pretraining = any(r["pretrained"] for r in rows)
    pretrained = pretrain(repeat_ctx(base, seed, 0, unet_args), pretrain_experiment, pre_args) if needs_pretraining else None
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(repeats):  # repeat-major: every row has its first run before any row gets a second
        ctx = repeat_ctx(base, seed, r, unet_args)
        runs.setdefault("real", []).append(real_row(ctx))
        if pretrained and public_only:
            runs.setdefault("public only (ε=0)", []).append(public_row(ctx))
        for i, row in enumerate(rows, 1):
            print(f"[dp-sweep repeat {r + 1}/{repeats}, row {i}/{len(rows)}] {row['name']}", flush=True)
            fine_tuning = (pretrained_args or []) if row["pretrained"] else []
            args = [*ctx["seed_args"], *(gan_args or []), *fine_tuning]
            experiment_file = experiment if row["unit"] == "patch" else patient_experiment
            runs.setdefault(row["name"], []).append(sweep_row(ctx, row, experiment_file, pretrained, args))
            write_outputs(out, runs)
    return write_outputs(out, runs)


def repeat_ctx(base: dict[str, Any], seed: int, repeat: int, unet_args: list[str] | None) -> dict[str, Any]:
    """The context of one repeat: seed + repeat for every run and the synthesis; run and state-file names get " r<n>"
    from the second repeat on (the first keeps the names of a sweep without repeats, so old state files resume)."""
    seed_args = ["--seed_everything", str(seed + repeat)]
    return {**base, "seed": seed + repeat, "repeat": repeat, "suffix": f" r{repeat}" if repeat else "", "seed_args": seed_args,
            "unet_args": [*seed_args, *(unet_args or [])]}  # fmt: skip


def tagged(ctx: dict[str, Any], name: str) -> str:
    """`name` of this repeat's runs and state-file keys."""
    return slug(name + ctx["suffix"])


def real_row(ctx: dict[str, Any]) -> dict[str, Any]:
    key, run = f"row/{tagged(ctx, 'real')}", f"unet-{tagged(ctx, 'real')}"
    done = ctx["ledger"].get(key)
    if done is None:
        fit = run_fit(ctx["unet"], run, ctx["out"], ctx["unet_args"], ctx["group"], ctx["select"])
        summary = test_unet(ctx, run, str(fit.checkpoint), ctx["unet_args"])
        extra = {"val_dsc": fit.score, "repeat": ctx["repeat"], "seed": ctx["seed"]}
        done = ctx["ledger"].record(key, result("real", {"unit": None}, summary, {"epsilon": None}, extra))
    return done


def pretrain(ctx: dict[str, Any], experiment: str, args: list[str]) -> str:
    """The one public pre-training (seed `seed`) that every repeat of every fine-tuned row starts from."""
    done = ctx["ledger"].get("pretrain")
    if done is None:
        gan = fit_gan("public-pretrain", experiment, ctx["out"], args, ctx["group"], "last")
        done = ctx["ledger"].record("pretrain", gan)
    return done["checkpoint"]


def public_row(ctx: dict[str, Any]) -> dict[str, Any]:
    """The public pre-trained GAN, selected and evaluated like every row: no private data touched, ε = 0. Its repeats
    re-synthesise and retrain the U-Net with the repeat's seed (the pre-training itself is made once)."""
    key = f"row/{tagged(ctx, 'public-only')}"
    done = ctx["ledger"].get(key)
    if done is None:
        best = select_snapshot(ctx, "public-only", ctx["ledger"].get("pretrain"))
        summary = test_unet(ctx, best["run"], best["unet_checkpoint"], [*ctx["unet_args"], *unet_data_args("synthetic", best["store"])])
        row = {"unit": None, "pretrained": True, "sigma": None, "target_epsilon": None}
        extra = {"gan_epoch": Path(best["gan_checkpoint"]).stem, "val_dsc": best["val_dsc"], "repeat": ctx["repeat"], "seed": ctx["seed"]}
        done = ctx["ledger"].record(key, result("public only (ε=0)", row, summary,
                                                {"epsilon": 0.0, "steps": 0, "noise_multiplier": None}, extra))
    return done


def sweep_row(ctx: dict[str, Any], row: dict[str, Any], experiment: str, pretrained: str | None, args: list[str]) -> dict[str, Any]:
    key = f"row/{tagged(ctx, row['name'])}"
    done = ctx["ledger"].get(key)
    if done is not None:
        return done
    started = time.time()
    gan_key = f"gan/{tagged(ctx, row['name'])}"
    gan = ctx["ledger"].get(gan_key) or ctx["ledger"].record(gan_key, fit_gan(
        row["name"] + ctx["suffix"], experiment, ctx["out"], [*args, *privacy_args(row, pretrained)], ctx["group"], "last"))
    best = select_snapshot(ctx, row["name"], gan)
    summary = test_unet(ctx, best["run"], best["unet_checkpoint"], [*ctx["unet_args"], *unet_data_args("synthetic", best["store"])])
    extra = {"gan_epoch": Path(best["gan_checkpoint"]).stem, "val_dsc": best["val_dsc"], "minutes": (time.time() - started) / 60,
             "repeat": ctx["repeat"], "seed": ctx["seed"]}  # fmt: skip
    return ctx["ledger"].record(key, result(row["name"], row, summary, best["privacy"], extra))
