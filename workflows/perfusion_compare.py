"""`tofgan perfusion-compare`: pix2pix vs temp-pix2pix for the five perfusion maps, as thesis ch. 7 (Figs. 4 and 6).

For every map (CBF, CBV, MTT, Tmax, TTP) and architecture: fit on the acute-like cohort, test on its test patients;
then (with `fine_tune`) fine-tune that model on the steno-occlusive cohort (`pretrained` = the acute run's last
checkpoint, the thesis' 50-epoch transfer) and test there. Each test writes per-slice / per-patient metrics
(`metrics.perfusion`: MAE, NRMSE, SSIM, PSNR, whole slice and brain mask) of the prediction against the pipeline map
it learned and against the simulator's truth, and of the oSVD pipeline against the truth, so one table says how
the networks compare with the pipeline they imitate and with the truth neither sees.

Resumable: `out_dir/compare_state.json` records every finished row (a rerun skips them; an interrupted fit restarts
from its last.ckpt); changed settings are refused. All runs share one W&B group. Outputs in `out_dir`:
comparison.csv, README.md (tables, sizes, wall times), figure_<cohort>.png (input frames, target, both predictions,
truth, error maps), runs/<row>/…, reports/<row>/….
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workflows.compare import Ledger
from workflows.compose import experiment_args
from workflows.runs import finish_wandb, run_fragments

MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
ACUTE = {"pix2pix": "cpu_thesis_pix2pix.yaml", "temp-pix2pix": "cpu_thesis_temp_pix2pix.yaml"}
STENO = {"pix2pix": "cpu_thesis_pix2pix_steno.yaml", "temp-pix2pix": "cpu_thesis_temp_pix2pix_steno.yaml"}


def experiment_digest(experiment: str) -> str:
    """sha256 (12 hex) of an experiment file and the fragments it composes: rows of an edited recipe are not reused."""
    args = experiment_args(experiment)
    texts = [Path(a).read_bytes() for a in args[1::2]]
    return hashlib.sha256(b"\0".join(texts)).hexdigest()[:12]


def row_name(cohort: str, target_map: str, architecture: str) -> str:
    return f"{cohort}-{target_map}-{architecture}"


def fit_row(experiment: str, run: str, out: Path, args: Sequence[str], group: str | None) -> dict[str, Any]:
    """One fit (from its newest last.ckpt when an earlier attempt stopped); returns its last checkpoint and size."""
    from cli import main

    partial = sorted((out / "runs" / run).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    resume = ["--ckpt_path", str(partial[-1])] if partial else []
    cli = main(["fit", *experiment_args(experiment), *run_fragments(run, out, group), *args, *resume])
    finish_wandb()
    module, dm = cli.model, cli.datamodule
    return {"checkpoint": str(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"),
            "generator_parameters": sum(p.numel() for p in module.generator.parameters()),
            "discriminator_parameters": sum(p.numel() for p in module.discriminator.parameters()),
            "train_slices": len(dm.dataset("train")), "splits": {k: len(v) for k, v in dm.splits.items()},
            "epochs": cli.trainer.current_epoch, "steps": cli.trainer.global_step // 2}  # fmt: skip


def test_row(experiment: str, run: str, ckpt: str, out: Path, args: Sequence[str], group: str | None) -> dict[str, Any]:
    """Tests `ckpt` on the experiment's test patients; returns the module's summary.json."""
    from cli import main

    report = out / "reports" / run
    main(["test", *experiment_args(experiment), *run_fragments(f"{run}-test", out, group), *args, "--ckpt_path", ckpt,
          "--model.init_args.report_dir", str(report)])  # fmt: skip
    finish_wandb()
    return {"report_dir": str(report), **json.loads((report / "summary.json").read_text())}


def run_row(ledger: Ledger, key: str, experiment: str, out: Path, args: list[str], group: str | None) -> dict[str, Any]:
    done = ledger.get(key)
    if done is not None:
        print(f"[perfusion-compare] {key}: done, skipped", flush=True)
        return done
    print(f"[perfusion-compare] {key}: fit + test ({experiment})", flush=True)
    started = time.time()
    fit = fit_row(experiment, key, out, args, group)
    test = test_row(experiment, key, fit["checkpoint"], out, args, group)
    return ledger.record(key, {"experiment": experiment, **fit, **test, "minutes": (time.time() - started) / 60})


def perfusion_compare(
    out_dir: str = "outputs/perfusion_compare",
    maps: list[str] = list(MAPS),  # noqa: B006 - read only
    acute: dict[str, str] = ACUTE,  # noqa: B006
    steno: dict[str, str] = STENO,  # noqa: B006
    fine_tune: bool = True,
    seed: int = 0,
    acute_args: list[str] | None = None,
    steno_args: list[str] | None = None,
    group: str | None = None,
    wandb: bool = True,
    resume: bool = True,
) -> Path:
    """Runs every row (map × architecture × cohort) and returns the folder holding README.md and comparison.csv.

    Args:
        out_dir: folder of runs, reports, state, table and figures.
        maps: the maps to learn (cbf, cbv, mtt, tmax, ttp).
        acute: {architecture: experiment file} fitted on the acute-like cohort. The CPU defaults run all 20 rows
            in about 10 minutes on one core (9.2 min measured on a shared, loaded machine); paper scale (GPU):
            {pix2pix: thesis_pix2pix_tmax.yaml, temp-pix2pix: thesis_temp_pix2pix_tmax.yaml} (each row sets its
            own `--data.init_args.target_map`).
        steno: {architecture: experiment file} fine-tuned on the steno-occlusive cohort from the acute row's
            checkpoint (paper scale: thesis_<arch>_tmax_steno.yaml, 50 epochs).
        fine_tune: also run the steno-occlusive rows.
        seed: `--seed_everything` of every run (and the data split seed).
        acute_args: more CLI arguments for every acute-like fit and test (e.g. `[--trainer.max_epochs, "5"]`).
        steno_args: more CLI arguments for every steno-occlusive fine-tune and test.
        group: W&B group of every run (default "perfusion-" + the out_dir name).
        wandb: False for CSV logs only.
        resume: skip the rows compare_state.json records as finished (False starts again).
    """
    from workflows.perfusion_report import write_report

    unknown = sorted(set(maps) - set(MAPS))
    if unknown or not maps:
        raise ValueError(f"workflows/perfusion_compare.py: maps must be a non-empty subset of {list(MAPS)}, got {maps}")
    if fine_tune and set(steno) != set(acute):
        raise ValueError(f"workflows/perfusion_compare.py: steno architectures {sorted(steno)} must be the acute ones "
                         f"{sorted(acute)} (each fine-tunes its acute model)")  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_args = ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    files = [*acute.values(), *(steno.values() if fine_tune else [])]
    settings = {"acute": acute, "steno": steno if fine_tune else None, "seed": seed,
                "acute_args": acute_args or [], "steno_args": steno_args or [],
                "experiment_files": {f: experiment_digest(f) for f in files}}  # an edited file is another setting
    ledger = Ledger(out, settings, resume)
    group = (group or f"perfusion-{out.name}") if wandb else None
    started = time.time()
    for target_map in maps:
        map_args = ["--data.init_args.target_map", target_map]
        for arch, experiment in acute.items():
            key = row_name("acute", target_map, arch)
            row = run_row(ledger, key, experiment, out, [*seed_args, *map_args, *(acute_args or [])], group)
            if fine_tune:
                tuned = ["--model.init_args.pretrained", row["checkpoint"]]
                run_row(ledger, row_name("steno", target_map, arch), steno[arch], out,
                        [*seed_args, *map_args, *tuned, *(steno_args or [])], group)  # fmt: skip
    print(f"[perfusion-compare] all rows done in {(time.time() - started) / 60:.1f} min (this call)", flush=True)
    return write_report(out, ledger.steps, maps, list(acute), ["acute", "steno"] if fine_tune else ["acute"])
