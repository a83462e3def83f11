"""Cost of the GAN evaluation (`tofgan test` with configs/callbacks/gan_evaluation.yaml), seconds per stage.

Evaluate an existing GAN checkpoint with an existing extractor, N synthetic vs ≤ N real patches per set:
    python bench/bench_evaluation.py --gan_ckpt RUN/checkpoints/last.ckpt --extractor EXT.ckpt --n 1000 --out /tmp/eb
Or the whole CPU recipe in --out (domain extractor from a short cpu_unet fit, a cpu_wgan_gp_sn fit with the
evaluation callback every `--every` epochs, model selection by val/fid, then the test report):
    python bench/bench_evaluation.py --recipe --unet_epochs 2 --gan_epochs 10 --n 1000 --out /tmp/eb
Prints the stage table and the report's scalars; the report is <out>/report/gan_evaluation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli import main  # noqa: E402
from workflows.compose import CONFIGS, experiment_args  # noqa: E402


def fragment(out: Path, extractor: str, n: int, every: int, fast_prd: bool) -> Path:
    """The shipped callback fragment with this bench's extractor and sample counts."""
    cfg = yaml.safe_load((CONFIGS / "callbacks" / "gan_evaluation.yaml").read_text())
    args = cfg["trainer"]["callbacks+"][0]["init_args"]
    args.update(extractor_checkpoint=extractor, every_n_epochs=every, test_n_samples=n, test_max_real=n,
                report_dir=str(out / "report"))
    if fast_prd:
        args.update(prd_num_runs=args["val_prd_num_runs"], prd_n_init=args["val_prd_n_init"])
    path = out / "gan_evaluation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def data_args(out: Path, cohort: str | None) -> list[str]:
    args = ["--data.init_args.cache_dir", str(out / "cache"), "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out)]
    return args + (["--data.init_args.cohort_dir", cohort] if cohort else [])


def recipe(a: argparse.Namespace, out: Path) -> tuple[str, str]:
    """Extractor, GAN fit with validation scores, checkpoint chosen by val/fid; returns (gan ckpt, extractor)."""
    from workflows.domain_extractor import train_domain_extractor
    from workflows.select_checkpoint import select_checkpoint

    t0 = time.perf_counter()
    ext = train_domain_extractor(str(out / "extractor"), a.unet_experiment, max_epochs=a.unet_epochs,
                                 extra_args=data_args(out / "unet", a.cohort))
    print(f"[recipe] domain extractor {ext.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    frag = fragment(out, str(ext), a.n, a.every, a.fast_prd)
    cli = main(["fit", *experiment_args(a.gan_experiment), "--config", str(frag), *data_args(out / "gan", a.cohort),
                "--trainer.max_epochs", str(a.gan_epochs),
                # per-evaluation snapshots for the selection (trainer/cpu.yaml keeps every 5th epoch only)
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.filename=fid-{epoch}",
                "--trainer.callbacks.monitor=val/fid", "--trainer.callbacks.save_top_k=-1",
                "--trainer.callbacks.every_n_epochs", str(a.every), "--trainer.callbacks.save_weights_only=true"])
    print(f"[recipe] GAN fit ({a.gan_epochs} epochs, evaluation every {a.every}): {time.perf_counter() - t0:.0f} s",
          flush=True)
    run = Path(cli.trainer.log_dir)
    chosen = select_checkpoint(str(run), "min:val/fid")
    print(f"[recipe] selected by min val/fid: {chosen}", flush=True)
    for line in (run / "evaluation" / "val_metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        s = rec["scalars"]
        print(f"  epoch {rec['epoch']}: fid {s.get('fid')}, prd_auc {s.get('prd_auc')}, eval {s['eval_seconds']:.1f} s")
    return str(chosen), str(ext)


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (keep it outside the repository)")
    p.add_argument("--gan_ckpt")
    p.add_argument("--extractor", help="segmentation checkpoint for workflows.domain_extractor")
    p.add_argument("--recipe", action="store_true", help="train extractor and GAN first (see module docstring)")
    p.add_argument("--gan_experiment", default="cpu_wgan_gp_sn.yaml")
    p.add_argument("--unet_experiment", default="cpu_unet.yaml")
    p.add_argument("--cohort", default=None, help="cohort_dir override (default: the experiment's)")
    p.add_argument("--unet_epochs", type=int, default=2)
    p.add_argument("--gan_epochs", type=int, default=10)
    p.add_argument("--every", type=int, default=5, help="validation evaluation every N epochs")
    p.add_argument("--n", type=int, default=1000, help="synthetic samples = real cap per set at test")
    p.add_argument("--fast_prd", action="store_true", help="validation PRD settings at test too")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.recipe:
        gan_ckpt, extractor = recipe(a, out)
    elif a.gan_ckpt and a.extractor:
        gan_ckpt, extractor = a.gan_ckpt, a.extractor
    else:
        p.error("give --recipe, or --gan_ckpt and --extractor")
    frag = fragment(out, extractor, a.n, a.every, a.fast_prd)
    t0 = time.perf_counter()
    main(["test", *experiment_args(a.gan_experiment), "--config", str(frag), *data_args(out / "test", a.cohort),
          "--ckpt_path", gan_ckpt])
    wall = time.perf_counter() - t0
    report = json.loads((out / "report" / "gan_evaluation.json").read_text())
    meta = report["meta"]
    print(f"\nGAN evaluation of {gan_ckpt}\n{meta['n_synthetic']} synthetic vs {meta['n_real_train']} real train / "
          f"{meta['n_real_heldout']} held-out patches; `tofgan test` wall {wall:.1f} s (incl. data setup)")
    print(f"{'stage':<16}{'seconds':>10}")
    for stage, sec in report["seconds"].items():
        print(f"{stage:<16}{sec:>10.2f}")
    print("scalars:", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in report["scalars"].items()}))
    print(f"report: {out / 'report' / 'gan_evaluation.md'}")


if __name__ == "__main__":
    run()
