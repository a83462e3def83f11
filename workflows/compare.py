"""`tofgan compare`: the 2D paper's GANs side by side, as in its Table 2 (Kossen et al. 2021); `--dims 3`: the 3D
paper's four WGANs (GP, SN, SN-MP, c-SN-MP), as in its Table 3 and Table A.1 (Subramaniam et al. 2022).

Every GAN is fitted on the same cohort with the same seed, one checkpoint per GAN is chosen by a documented
rule (`gan_select`, `workflows.select_checkpoint`: the epoch of lowest validation FID when `fid_extractor` is
given, else the last epoch), and `n_synthetic` pairs are synthesised from it. Then one U-Net experiment is fitted, with the same seed and
settings, on: the real training patches; each GAN's synthetic pairs only ("anonymisation"); real + each GAN's
pairs ("augmentation"). Each U-Net's epoch is chosen on the fit-time `val/dsc` (`select`, as in
`workflows.grid_search`), and that checkpoint is tested on the whole volumes of the validation patients
(Table 2's "val" columns) and of the test patients ("test"), and, with `external`, on the test patients of a
second cohort (the paper's "evaluated on real 1000Plus" rows). All runs share one W&B group.

The comparison resumes: `out_dir/compare_state.json` records every finished step, and a rerun with the same
settings skips them (an interrupted GAN fit restarts from its `last.ckpt`). Outputs in `out_dir`:
comparison.csv (one row per U-Net × evaluation set × vessel set), README.md (Table 2 layout, the paper's
ordering check, figures), comparison.png, samples.png, gan_losses_<gan>.png, runs/, synthetic/<gan>/.

3D (`dims=3`): the CPU defaults are the cpu_compare3d_*.yaml GANs (32×32×16 patches), the 3D U-Net
cpu_compare3d_unet.yaml and the 1000Plus-like cohort of cpu_compare3d_external.yaml. As the paper, every U-Net
(synthetic only, real, real + synthetic) is tested on the test patients of both cohorts (no whole-volume validation
test: the epoch is still chosen on the fit-time `val/dsc`), and the report is Table 3 (synthetic only and real:
DSC and bAVD in voxels, PEGASUS-like and 1000Plus-like, all vessels and intracranial) and Table A.1 (real +
synthetic).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from workflows.compare_report import slug, write_report
from workflows.compose import CONFIGS, experiment_args
from workflows.grid_search import Select, run_fit, run_test
from workflows.report import write_csv
from workflows.runs import finish_wandb, run_fragments

GANS = {"DCGAN": "cpu_compare_dcgan.yaml", "WGAN-GP": "cpu_compare_wgan_gp.yaml",
        "WGAN-GP-SN": "cpu_compare_wgan_gp_sn.yaml"}  # fmt: skip
GANS3D = {"GP": "cpu_compare3d_gp.yaml", "SN": "cpu_compare3d_sn.yaml", "SN-MP": "cpu_compare3d_sn_mp.yaml",
          "c-SN-MP": "cpu_compare3d_c_sn_mp.yaml"}  # fmt: skip
DEFAULTS = {2: {"gans": GANS, "unet": "cpu_unet.yaml", "external": "cpu_transfer_1000plus.yaml"},
            3: {"gans": GANS3D, "unet": "cpu_compare3d_unet.yaml", "external": "cpu_compare3d_external.yaml"}}


class Ledger:
    """Finished steps of one comparison, so an interrupted run goes on where it stopped and loses nothing.

    Settings other than the GAN list must match the recorded ones; GANs may be added to a finished
    comparison (only their steps run), but a GAN name keeps its experiment file."""

    def __init__(self, out: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path, self.settings = out / "compare_state.json", settings
        self.steps: dict[str, Any] = {}
        if resume and self.path.is_file():
            saved = json.loads(self.path.read_text())
            changed = sorted(k for k in settings if settings[k] != saved["settings"].get(k))
            if changed:
                raise ValueError(f"{self.path}: this folder holds a comparison with other settings ({', '.join(changed)}); "
                                 "use another out_dir, or resume=false to start it again")  # fmt: skip
            self.steps = saved["steps"]

    def get(self, key: str) -> Any:
        return self.steps.get(key)

    def check_gan(self, name: str, experiment: str) -> None:
        recorded = (self.get(f"gan/{name}") or {}).get("experiment", experiment)
        if recorded != experiment:
            raise ValueError(f"{self.path}: GAN {name!r} was trained from {recorded}, not {experiment}; give it another "
                             "name, or use another out_dir")  # fmt: skip

    def record(self, key: str, value: Any) -> Any:
        self.steps[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "steps": self.steps}, indent=2))
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a state file
        return value


def fit_gan(name: str, experiment: str, out: Path, args: list[str], group: str | None, rule: str) -> dict[str, Any]:
    """Fits one GAN (from its newest last.ckpt if an earlier attempt stopped) and selects its checkpoint."""
    from cli import main
    from workflows.select_checkpoint import select_checkpoint

    run = f"gan-{slug(name)}"
    partial = sorted((out / "runs" / run).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    resume = ["--ckpt_path", str(partial[-1])] if partial else []
    cli = main(["fit", *experiment_args(experiment), *run_fragments(run, out, group), *args, *resume])
    finish_wandb()
    run_dir = Path(cli.trainer.checkpoint_callback.dirpath).parent
    metrics_csv = Path(cli.trainer.loggers[0].log_dir) / "metrics.csv"
    if partial:  # the resumed fit logged into a new version folder: select among (and plot) every epoch
        metrics_csv = merge_resumed_versions(out / "runs" / run, run_dir)
    chosen = select_checkpoint(str(run_dir), rule, str(metrics_csv))
    selection = json.loads((run_dir / "selection.json").read_text())
    return {"experiment": experiment, "checkpoint": str(chosen), "epoch": selection["epoch"], "rule": rule,
            "value": selection["value"], "metrics_csv": str(metrics_csv), "run_dir": str(run_dir)}  # fmt: skip


def merge_resumed_versions(run_root: Path, final: Path) -> Path:
    """A fit resumed from `last.ckpt` logs into a new `version_N` folder (Lightning's CSVLogger deletes the
    metrics.csv of a folder it reuses), so the epochs before the kill live in earlier folders. This links their
    per-epoch checkpoints into `final`/checkpoints and writes `final`/metrics_all.csv (each epoch's rows from the
    newest version that logged it), so checkpoint selection and the loss figure see every epoch. Returns that file."""
    versions = sorted(run_root.glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    keys, by_epoch = ["epoch", "step"], {}
    for version in versions:
        if (version / "metrics.csv").is_file():
            with open(version / "metrics.csv", newline="") as fh:
                reader = csv.DictReader(fh)
                keys += [k for k in reader.fieldnames or [] if k not in keys]
                rows = [r for r in reader if r.get("epoch")]
            for epoch in {int(r["epoch"]) for r in rows}:  # a re-run epoch replaces the interrupted one
                by_epoch[epoch] = [r for r in rows if int(r["epoch"]) == epoch]
    for version in reversed(versions):  # newest first: a later folder's checkpoint of an epoch wins
        for ckpt in (version / "checkpoints").glob("epoch=*.ckpt"):
            target = final / "checkpoints" / ckpt.name
            if not target.exists():  # (the final folder's own files are their own targets)
                try:
                    os.link(ckpt, target)
                except OSError:  # a filesystem without hard links
                    shutil.copy2(ckpt, target)
    return write_csv([r for epoch in sorted(by_epoch) for r in by_epoch[epoch]], keys, final / "metrics_all.csv")


def evaluation_fragment(out: Path, extractor: str) -> list[str]:
    """configs/callbacks/gan_evaluation.yaml with `extractor` as FID feature extractor, for every GAN fit."""
    if not Path(extractor).is_file():
        raise FileNotFoundError(f"{extractor}: FID extractor checkpoint not found (make one with `tofgan domain-extractor`)")
    config = yaml.safe_load((CONFIGS / "callbacks" / "gan_evaluation.yaml").read_text())
    config["trainer"]["callbacks+"][0]["init_args"]["extractor_checkpoint"] = str(Path(extractor).resolve())
    path = out / "configs" / "gan_evaluation.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ["--config", str(path)]


def unet_rows(gans: list[str]) -> list[tuple[str, str | None]]:
    """(training data, GAN) of every U-Net, in Table 2's order: real, augmentation, anonymisation."""
    return [("real", None), *[("real+synthetic", g) for g in gans], *[("synthetic", g) for g in gans]]


def unet_data_args(training: str, store: str | None) -> list[str]:
    if training == "real":
        return []
    args = ["--data.init_args.synthetic_stores", f"[{store}]"]
    return args + (["--data.init_args.use_real", "false"] if training == "synthetic" else [])


def evaluate_unet(ctx: dict[str, Any], run: str, training: str, ckpt: Path, args: list[str]) -> dict[str, Any]:
    """Per-patient test summaries of one U-Net checkpoint on the validation, test (and external) patients."""
    out, group = ctx["out"], ctx["group"]
    summaries = {}
    for split in ctx["splits"]:
        report = out / "runs" / run / split
        summaries[split] = run_test(ctx["unet"], f"{run}-{split}", ckpt, out, report,
                                    [*args, "--data.init_args.test_split", split], group, ctx["error_maps"])  # fmt: skip
    if ctx["external"] and training in ctx["external_for"]:  # the trainings the paper tested on the second cohort
        report = out / "runs" / run / "external"
        summaries["external"] = run_test(ctx["external"], f"{run}-external", ckpt, out, report,
                                         ctx["external_args"], group, ctx["error_maps"])  # fmt: skip
    return summaries


def compare(
    out_dir: str = "outputs/compare",
    gans: dict[str, str] | None = None,
    unet: str | None = None,
    external: str | None = "auto",
    n_synthetic: int = 2000,
    fid_extractor: str | None = None,
    gan_select: str | None = None,
    select: Select = "best",
    seed: int = 0,
    gan_args: list[str] | None = None,
    unet_args: list[str] | None = None,
    external_args: list[str] | None = None,
    group: str | None = None,
    wandb: bool = True,
    error_maps: bool = False,
    resume: bool = True,
    dims: Literal[2, 3] = 2,
) -> Path:
    """Runs the comparison and returns the folder holding README.md and comparison.csv.

    Args:
        out_dir: folder of runs, synthetic stores, state and report.
        gans: {row name: GAN experiment file}; default: the CPU GANs of `dims` (2D: cpu_compare_*.yaml, 3.7k steps
            each; 3D: cpu_compare3d_{gp,sn,sn_mp,c_sn_mp}.yaml). Paper scale 2D: {DCGAN: kossen2021_dcgan.yaml,
            WGAN-GP: kossen2021_wgan_gp.yaml, WGAN-GP-SN: kossen2021_wgan_gp_sn.yaml} with unet
            kossen2021_unet.yaml; 3D: {GP: subramaniam2022_gp.yaml, …} with unet subramaniam2022_unet3d.yaml and
            external subramaniam2022_external_1000plus.yaml (GPU).
        unet: U-Net experiment file (default cpu_unet.yaml / cpu_compare3d_unet.yaml); its cohort must be the GANs'
            cohort (same cohort_dir, split, patch size, preprocessing).
        external: U-Net experiment whose test patients form the second cohort; "auto": cpu_transfer_1000plus.yaml
            (2D) / cpu_compare3d_external.yaml (3D); None: no external rows. Its net must be the `unet` experiment's
            net (kossen2021_transfer_1000plus.yaml with kossen2021_unet.yaml).
        n_synthetic: pairs synthesised per GAN (paper: 41,000 = the real training patch count).
        fid_extractor: a domain extractor checkpoint (`tofgan domain-extractor`, on the same cohort split): every
            GAN fit then runs configs/callbacks/gan_evaluation.yaml with it and logs val/fid every 5 epochs.
        gan_select: rule choosing each GAN's checkpoint: "last", "min:<key>" or "max:<key>"; default
            "min:val/fid" with `fid_extractor` (the epoch of lowest validation FID), else "last".
        select: "best" or "last" epoch of each U-Net (workflows.grid_search).
        seed: `--seed_everything` of every run and the synthesis noise seed.
        gan_args: more CLI arguments for every GAN fit (e.g. `--trainer.max_epochs 100`).
        unet_args: more CLI arguments for every U-Net fit and test on the first cohort.
        external_args: more CLI arguments for the external tests.
        group: W&B group of every run (default "compare-" + the out_dir name).
        wandb: False for CSV logs only.
        error_maps: write error maps of every tested patient.
        resume: skip the steps `compare_state.json` records as finished (False starts again).
        dims: 2 (Table 2 of the 2D paper) or 3 (Table 3 and A.1 of the 3D paper; module docstring).
    """
    from workflows.synthesize import synthesize

    if dims not in DEFAULTS:
        raise ValueError(f"tofgan compare: dims must be 2 or 3, got {dims}")
    gans = gans if gans is not None else DEFAULTS[dims]["gans"]
    unet = unet or DEFAULTS[dims]["unet"]
    external = DEFAULTS[dims]["external"] if external == "auto" else external
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gan_select = gan_select or ("min:val/fid" if fid_extractor else "last")
    gan_args = [*(evaluation_fragment(out, fid_extractor) if fid_extractor else []), *(gan_args or [])]
    settings = {"unet": unet, "external": external, "n_synthetic": n_synthetic, "fid_extractor": fid_extractor,
                "gan_select": gan_select, "select": select, "seed": seed, "gan_args": gan_args,
                "unet_args": unet_args or [], "external_args": external_args or [],
                **({"dims": dims} if dims != 2 else {})}  # fmt: skip  (2D state files from before `dims` still resume)
    ledger = Ledger(out, settings, resume)
    for name, experiment in gans.items():
        ledger.check_gan(name, experiment)
    seed_args = ["--seed_everything", str(seed)]
    ctx = {"out": out, "group": (group or f"compare-{out.name}") if wandb else None, "unet": unet,
           "external": external, "external_args": [*seed_args, *(external_args or [])], "error_maps": error_maps,
           # the 3D paper tested every U-Net on both test sets only; the 2D paper also validation volumes, and
           # real and synthetic-only U-Nets on the external cohort
           "splits": ("test",) if dims == 3 else ("val", "test"),
           "external_for": ("real", "synthetic", "real+synthetic") if dims == 3 else ("real", "synthetic")}  # fmt: skip
    total, step = len(gans) + len(unet_rows(list(gans))), 0
    for name, experiment in gans.items():
        step += 1
        print(f"[compare {step}/{total}] GAN {name} ({experiment})", flush=True)
        if ledger.get(f"gan/{name}") is None:
            started = time.time()
            gan = fit_gan(name, experiment, out, [*seed_args, *gan_args], ctx["group"], gan_select)
            gan["store"] = str(synthesize(gan["checkpoint"], str(out / "synthetic" / slug(name)), n_samples=n_synthetic,
                                          seed=seed, overwrite=True, wandb_group=ctx["group"]))  # fmt: skip
            ledger.record(f"gan/{name}", {**gan, "minutes": (time.time() - started) / 60})
    for training, gan_name in unet_rows(list(gans)):
        step += 1
        run = f"unet-{slug(training)}" + (f"-{slug(gan_name)}" if gan_name else "")
        print(f"[compare {step}/{total}] U-Net on {training}" + (f" ({gan_name})" if gan_name else ""), flush=True)
        if ledger.get(f"unet/{run}") is not None:
            continue
        started = time.time()
        store = ledger.get(f"gan/{gan_name}")["store"] if gan_name else None
        args = [*seed_args, *(unet_args or []), *unet_data_args(training, store)]
        fit = run_fit(unet, run, out, args, ctx["group"], select)
        summaries = evaluate_unet(ctx, run, training, fit.checkpoint, args)
        ledger.record(f"unet/{run}", {"training": training, "gan": gan_name, "epoch": fit.epoch, "val_dsc_patches": fit.score,
                                      "checkpoint": str(fit.checkpoint), "summaries": summaries,
                                      "minutes": (time.time() - started) / 60})  # fmt: skip
    return write_report(out, ledger.steps, list(gans), dims)
