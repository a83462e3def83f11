"""Quick DP utility trial (docs/DP_RESULTS.md, trials B*–D*): fit one DP-WGAN row, synthesise its last snapshot, train
and test the CPU U-Net (no real row). Usage: python bench/dp_trial.py NAME patch|patient EPS [--key value overrides]."""
import json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflows.compare import Ledger
from workflows import dp_sweep as S

name, unit, eps, extra = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
out = Path(f"outputs/D/trials/{name}")
out.mkdir(parents=True, exist_ok=True)
t = time.time()
ledger = Ledger(out, {"x": 1}, True)
ctx = {"out": out, "ledger": ledger, "group": None, "unet": "cpu_unet.yaml",
       "unet_args": ["--seed_everything", "0", "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false"],
       "candidates": 1, "n_synthetic": 2000, "select": "best", "seed": 0}
row = {"name": name, "unit": unit, "pretrained": False, "sigma": None if eps > 0 else float("inf"), "target_epsilon": eps if eps > 0 else None}
exp = "cpu_dp_wgan.yaml" if unit == "patch" else "cpu_dp_wgan_patient.yaml"
args = ["--seed_everything", "0", "--config", "configs/schedule/ttur.yaml", "--model.init_args.gradient_penalty", "per_sample_func",
        "--model.init_args.weight_clip", "null", "--trainer.enable_progress_bar", "false", *extra]
res = S.sweep_row(ctx, row, exp, None, args)
print("RESULT", name, json.dumps({k: res.get(k) for k in ("epsilon", "sigma", "steps", "dsc_intracranial_mean", "val_dsc")}),
      f"{(time.time()-t)/60:.1f} min", flush=True)
