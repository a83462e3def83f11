"""One prepared GPU check (≤ 8 min on one GPU): the figures of the README's performance table, in one JSON.

1. 2D paper GAN (kossen2021_wgan_gp_sn: WGAN-GP, spectral-norm critic, ngf = ndf = 96, 96×96, batch 300, 5 critic
   steps per G step) through a Lightning Trainer in fp32, 16-mixed and bf16-mixed, the critic in fp32 (the shipped
   setting, `critic_precision: fp32`) and in the reduced precision (`auto`): samples/s (real patches consumed per
   second), peak memory, and the gradient penalty of the first critic step against fp32 on the same weights, noise
   and batch (|Δ| / fp32 ≤ GP_TOLERANCE is `gp_ok`).
2. The paper's half U-Net (kossen2021_unet: features 32…512, batch 64, 96×96) training step: samples/s, memory.
3. Sliding-window inference of one 312×384×127 volume (the U-Net over axial slices, 96×96 windows, overlap 0.5,
   Gaussian blending: the shipped test settings): seconds per volume, memory.
4. One 3D GAN iteration of the 3D paper (bench/bench_gan3d.py's project SN-MP row, bf16, sub-pixel G, batch 4).
5. The loader benchmark (bench/bench_loader.py) against the 2D and 3D step figures above: input-bound or not.

    python bench/gpu_check.py --out outputs/gpu_check.json                # CUDA, paper sizes
    OMP_NUM_THREADS=1 python bench/gpu_check.py --scale tiny --out c.json  # CPU, seconds (tests run this)
    python bench/gpu_check.py --render outputs/gpu_check.json              # the README's markdown table
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import bench_gan3d  # noqa: E402
import bench_loader  # noqa: E402
from bench_gan3d import IterationTimer, RealBatches, _memory, _reset_memory, sync  # noqa: E402
from lightning_modules.segmentation import SegmentationModule  # noqa: E402
from lightning_modules.wgan import WGANGP  # noqa: E402
from networks.gan2d import Generator2D, WGANCritic2D  # noqa: E402
from networks.unet2d import HalfUNet2D  # noqa: E402

GP_TOLERANCE = 0.05  # relative; the penalty of a reduced-precision critic may differ by rounding, not by scale
#: scale → sizes (paper: the shipped configs; tiny: the same code paths on a CPU in seconds)
SCALES: dict[str, dict[str, Any]] = {
    "paper": {"patch": 96, "gan_batch": 300, "width": 96, "unet_batch": 64, "features": [32, 64, 128, 256, 512],
              "volume": (312, 384, 127), "sw_batch": 64, "warmup": 5, "iters": 20, "loader_s": 4.0, "gan3d": "paper"},
    "tiny": {"patch": 24, "gan_batch": 8, "width": 4, "unet_batch": 8, "features": [4, 8, 16],
             "volume": (40, 48, 6), "sw_batch": 8, "warmup": 1, "iters": 2, "loader_s": 0.3, "gan3d": "tiny"},
}  # fmt: skip
PRECISIONS = [("32-true", "fp32"), ("16-mixed", "fp32"), ("16-mixed", "auto"), ("bf16-mixed", "fp32"),
              ("bf16-mixed", "auto")]  # fmt: skip


def trainer(device: str, precision: str, max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(accelerator=device, devices=1, precision=precision, max_steps=max_steps, logger=False,  # type: ignore[arg-type]
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, benchmark=device == "cuda", callbacks=callbacks)  # fmt: skip


def wgan2d(s: dict[str, Any], critic_precision: str) -> WGANGP:
    torch.manual_seed(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9))
    g = Generator2D(latent_dim=128, ngf=s["width"], out_size=s["patch"])
    d = WGANCritic2D(ndf=s["width"], in_size=s["patch"], norm="spectral")
    return WGANGP(g, d, adam, adam, latent_dim=128, n_critic=5, gp_weight=10.0, n_sample_grid=1, noise_seed=0,
                  critic_precision=critic_precision)  # type: ignore[arg-type]


def batch2d(size: int, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(batch, 1, size, size, generator=g) * 2 - 1,
            "label": (torch.rand(batch, 1, size, size, generator=g) > 0.97).float()}  # fmt: skip


def first_penalty(s: dict[str, Any], device: str, precision: str, critic_precision: str) -> float:
    """Gradient penalty of the first critic step (same weights, noise and batch for every precision)."""
    model = wgan2d(s, critic_precision)
    data = DataLoader(RealBatches(batch2d(s["patch"], s["gan_batch"]), 1), batch_size=None)
    t = trainer(device, precision, 1, [])
    t.fit(model, data)
    return float(t.callback_metrics["train/gradient_penalty"])


def gan2d_rows(s: dict[str, Any], device: str) -> list[dict[str, Any]]:
    rows, reference = [], None
    for precision, critic_precision in PRECISIONS:
        gp = first_penalty(s, device, precision, critic_precision)
        reference = gp if reference is None else reference
        timer = IterationTimer(device, s["warmup"])
        n = s["warmup"] + s["iters"]
        data = DataLoader(RealBatches(batch2d(s["patch"], s["gan_batch"]), n), batch_size=None)
        t = trainer(device, precision, n + n // 5 + 1, [timer])  # critic steps + generator steps
        t.fit(wgan2d(s, critic_precision), data)
        sec = statistics.median(timer.times[s["warmup"]:])
        rel = abs(gp - reference) / max(abs(reference), 1e-12)
        rows.append({"kind": "2d", "precision": precision, "precision_run": str(t.precision),
                     "critic_precision": critic_precision, "batch": s["gan_batch"], "ms_per_batch": 1000 * sec,
                     "samples_per_s": s["gan_batch"] / sec, "gradient_penalty": gp, "gp_rel_diff_vs_fp32": rel,
                     "gp_ok": rel <= GP_TOLERANCE, **_memory(device)})  # fmt: skip
        print(f"gan2d {precision}/{critic_precision}: {rows[-1]['samples_per_s']:.0f} samples/s, GP {gp:.4g} "
              f"(Δ {rel:.2e})", flush=True)
    return rows


def unet_row(s: dict[str, Any], device: str, precision: str = "32-true") -> dict[str, Any]:
    torch.manual_seed(0)
    model = SegmentationModule(HalfUNet2D(features=s["features"], dropout=0.1), roi_size=(s["patch"],) * 2)
    timer = IterationTimer(device, s["warmup"])
    n = s["warmup"] + s["iters"]
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(s["unet_batch"], 1, s["patch"], s["patch"], generator=g),
             "label": (torch.rand(s["unet_batch"], 1, s["patch"], s["patch"], generator=g) > 0.95).float()}
    trainer(device, precision, n, [timer]).fit(model, DataLoader(RealBatches(batch, n), batch_size=None))
    sec = statistics.median(timer.times[s["warmup"]:])
    return {"precision": precision, "batch": s["unet_batch"], "ms_per_batch": 1000 * sec,
            "samples_per_s": s["unet_batch"] / sec, **_memory(device)}  # fmt: skip


def sliding_window_row(s: dict[str, Any], device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = SegmentationModule(HalfUNet2D(features=s["features"], dropout=0.1), roi_size=(s["patch"],) * 2,
                               sw_batch_size=s["sw_batch"]).to(device).eval()  # fmt: skip
    volume = torch.randn(1, 1, *s["volume"], device=device)
    model.predict_volume(volume[..., :2])  # warm-up (cuDNN autotuning)
    _reset_memory(device)
    sync(device)
    t0 = time.perf_counter()
    prob = model.predict_volume(volume)
    sync(device)
    assert prob.shape == volume.shape
    return {"volume": list(s["volume"]), "roi": [s["patch"]] * 2, "overlap": model.overlap,
            "seconds_per_volume": time.perf_counter() - t0, **_memory(device)}  # fmt: skip


def gan3d_row(s: dict[str, Any], device: str) -> dict[str, Any]:
    args = argparse.Namespace(scale=s["gan3d"], device=device, batch=4, warmup=s["warmup"], iters=s["iters"] // 2 or 1)
    row = bench_gan3d.run_case(bench_gan3d.Case("project", "sn_mp", "bf16", "subpixel"), args)
    return {"kind": "3d", **row}


def run(scale: str, device: str) -> dict[str, Any]:
    s = SCALES[scale]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"scale": scale, "device": device, "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name() if device == "cuda" else None}  # fmt: skip
    result["gan2d"] = gan2d_rows(s, device)
    result["unet"] = unet_row(s, device, "32-true")
    result["sliding_window"] = sliding_window_row(s, device)
    result["gan3d"] = [gan3d_row(s, device)]
    need = {"2d": max(r["samples_per_s"] for r in result["gan2d"]), "3d": result["gan3d"][0]["samples_per_s"]}
    rows = bench_loader.run(bench_loader_scale(scale), (0, 2, 4), s["loader_s"], 200)
    for r in rows:
        r["step_samples_per_s"] = need[r["kind"]]
        r["input_bound"] = r["patches_per_s"] < need[r["kind"]]
    result["loader"] = rows
    result["seconds"] = time.perf_counter() - t0
    return result


def bench_loader_scale(scale: str) -> str:
    return "paper" if scale == "paper" else "tiny"


def render_table(result: dict[str, Any]) -> str:
    """The README's performance table (markdown) from a gpu_check JSON."""
    def mib(r: dict[str, Any]) -> str:
        return "–" if r.get("peak_allocated_mib") is None else f"{r['peak_allocated_mib']:.0f}"

    lines = [f"Measured by `bench/gpu_check.py` on {result.get('gpu') or result['device']} (torch {result['torch']}, "
             f"{result['scale']} sizes).", "",
             "| what | setting | throughput | peak memory MiB | check |", "|---|---|---|---|---|"]  # fmt: skip
    for r in result["gan2d"]:
        lines.append(f"| 2D GAN step (batch {r['batch']}) | {r['precision']}, critic {r['critic_precision']} | "
                     f"{r['samples_per_s']:.0f} samples/s | {mib(r)} | GP Δ vs fp32 {r['gp_rel_diff_vs_fp32']:.1e} "
                     f"({'ok' if r['gp_ok'] else 'OFF'}) |")
    u = result["unet"]
    lines.append(f"| U-Net training step (batch {u['batch']}) | {u['precision']} | {u['samples_per_s']:.0f} samples/s | "
                 f"{mib(u)} | |")
    w = result["sliding_window"]
    lines.append(f"| sliding-window inference | {'×'.join(map(str, w['volume']))} volume, {w['roi'][0]}² windows, "
                 f"overlap {w['overlap']} | {w['seconds_per_volume']:.2f} s/volume | {mib(w)} | |")
    for r in result["gan3d"]:
        lines.append(f"| 3D GAN iteration (batch {r['batch'] if 'batch' in r else 4}) | {r['variant']}, {r['precision']}, "
                     f"{r['upsample']} G | {r['samples_per_s']:.1f} samples/s | {mib(r)} | |")
    for r in result["loader"]:
        lines.append(f"| loader, {r['kind']} store | {r['workers']} workers, batch {r['batch']} | "
                     f"{r['patches_per_s']:.0f} patches/s | – | "
                     f"{'input-bound' if r['input_bound'] else 'keeps up'} (step needs {r['step_samples_per_s']:.0f}/s) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--render", type=Path, help="print the README table of an existing JSON and exit")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
    else:
        result = run(args.scale, args.device)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_name(f".{args.out.name}.tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.out)
    print(render_table(result))
    return result


if __name__ == "__main__":
    main()
