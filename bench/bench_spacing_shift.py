"""What resampling to the training spacing buys: a CPU U-Net (cpu_unet.yaml) trained on the 0.5×0.5×0.7 mm
simulated cohort, tested on its test patients as they are, on finer copies of them (resampled to
`--fine_spacing`, as a scan at another spacing), and on the same copies with `target_spacing` = the training
spacing (predictions mapped back to the fine native grid, scored there).

    OMP_NUM_THREADS=1 python bench/bench_spacing_shift.py --out_dir outputs/spacing/bench [--ckpt last.ckpt]

The finer copies are interpolated, not new acquisitions (no finer detail or noise): the measured effect is the
one of vessel size in voxels, which is what a spacing mismatch changes for a U-Net.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.preprocess import VolumePrep, resample_to_spacing
from datamodules.segmentation_data import SegmentationDataModule
from datamodules.volumes import VolumeDataset
from lightning_modules.segmentation import SegmentationModule

UNET = "cpu_unet.yaml"


def fit_unet(out: Path, seed: int) -> Path:
    from cli import main
    from workflows.compose import experiment_args
    from workflows.runs import finish_wandb, run_fragments

    cli = main(["fit", *experiment_args(UNET), *run_fragments("unet", out, "spacing"), "--seed_everything", str(seed)])
    finish_wandb()
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def write_fine_copies(records: list, spacing: tuple[float, float, float], root: Path) -> list:
    """Each patient resampled to `spacing` (image trilinear, label and mask nearest), as a cohort folder."""
    out = []
    for rec in records:
        files = {}
        for kind, path in rec.files().items():
            img = nib.load(str(path))
            mode = "bilinear" if kind == "image" else "nearest"
            data, affine = resample_to_spacing(np.asarray(img.get_fdata(), np.float32), img.affine, spacing, mode)
            data = data if kind == "image" else (data > 0.5).astype(np.uint8)
            files[kind] = root / rec.patient_id / f"{kind}.nii.gz"
            files[kind].parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(files[kind]))
        out.append(replace(rec, image=files["image"], label=files["label"], brain_mask=files.get("brain_mask")))
    return out


def test(ckpt: Path, records: list, report_dir: Path) -> dict:
    module = SegmentationModule.load_from_checkpoint(ckpt, report_dir=str(report_dir))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.test(module, DataLoader(VolumeDataset(records), batch_size=1), verbose=False)
    summary = json.loads((report_dir / "test_summary.json").read_text())["results"]
    summary["spacing_warning"] = any("trained at" in str(w.message) for w in caught)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default="outputs/spacing/bench")
    parser.add_argument("--ckpt", default=None, help="a cpu_unet.yaml checkpoint; fitted here if not given")
    parser.add_argument("--fine_spacing", type=float, nargs=3, default=[0.3, 0.3, 0.7])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out_dir)
    ckpt = Path(args.ckpt) if args.ckpt else fit_unet(out, args.seed)
    module = SegmentationModule.load_from_checkpoint(ckpt)
    print("trained at", module.train_spacing)
    dm = SegmentationDataModule(cohort_dir="data/simulated/pegasus-cpu", n_train=10, n_val=2, n_test=4,
                                simulate={"profile": "pegasus", "n_patients": 16, "scale": 0.5, "seed": 0},
                                skull_strip=True)  # as cpu_unet.yaml
    dm.setup("test")  # cohort (simulated on first use), splits, validation; no patch cache
    native = dm.records_of("test")
    fine = write_fine_copies(native, tuple(args.fine_spacing), out / "fine_cohort")
    back = VolumePrep(tuple(module.train_spacing), skull_strip=True)
    rows = {"native 0.5 mm": native, f"{args.fine_spacing} mm, no resampling": fine,
            f"{args.fine_spacing} mm, target_spacing {list(module.train_spacing)}": [replace(r, prep=back) for r in fine]}
    table = ["| test volumes | DSC | 95HD (mm) | warning |", "|---|---|---|---|"]
    for i, (name, records) in enumerate(rows.items()):
        res = test(ckpt, records, out / f"test_{i}")
        a = res["all"]
        table.append(f"| {name} | {a['dsc_mean']:.3f} ± {a['dsc_std']:.3f} | {a['hd95_mean']:.2f} | "
                     f"{'yes' if res['spacing_warning'] else 'no'} |")
    print("\n".join(table))
    (out / "results.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
