"""Cost of one 3D GAN iteration (1 critic + 1 generator step, batch 4) of the 3D paper: the project's WGANGP loop
against a copy of the authors' loop, per variant, precision, generator form, memory format and compile.

Rows (one per case, all in the same process and on the same device):
- "project": `lightning_modules.wgan.WGANGP` run by a Lightning Trainer with the case's precision plugin: fake
  generated without grad and detached in the critic step, per-sample ε and norm, critic frozen in the G step;
  "bf16" means bf16-mixed with `critic_precision="fp32"` (G in bf16, critic and penalty in fp32/TF32).
- "authors": the authors' `train.py` loop as described in notes/3d-paper.md A1/A2 (their code is not in this
  repository): fake generated WITH its graph and not detached, real and fake scored in separate passes, ONE ε
  per batch, the penalty on the whole batch's gradient norm with its graph through G, fp32 or fp16 autocast with
  ONE GradScaler shared by both optimisers (unscaled penalty gradient).
Columns: ms per iteration (median of the timed iterations after warm-up), samples/s, peak allocated and reserved
device memory (CUDA only), model FLOPs per iteration (counted once per case on the meta device by a dispatch-mode
counter, which survives the penalty's double backward where FlopCounterMode does not) and MFU = FLOPs / time /
989.4 TFLOP/s (H100/H200 dense bf16 peak, the same denominator for every row; CUDA only).

    OMP_NUM_THREADS=1 python bench/bench_gan3d.py --scale tiny            # CPU, seconds (tests run this)
    python bench/bench_gan3d.py --scale paper --device cuda --out gan3d.json
Targets (issue 11, not test assertions): project SN-MP ≥ 3× the authors' samples/s and ≤ 0.5× their peak memory.
On CUDA it finishes with a bf16-vs-fp32 conv3d check on G's last-block shape (cuDNN bf16 conv3d regressions,
pytorch #163539): relative error < 1e-2 expected.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lightning_modules.wgan import WGANGP, gradient_penalty  # noqa: E402
from networks.gan3d import Generator3D, WGANCritic3D  # noqa: E402

PEAK_FLOPS = 989.4e12  # H100/H200 SXM dense bf16 (spec sheet), MFU denominator for every row
LATENT, GP_WEIGHT = 128, 10.0
#: variant → (critic norm, paper width); the MP variants differ from SN in precision only, c-SN-MP in width.
VARIANTS = {"gp": ("instance", 512), "sn": ("spectral", 512), "sn_mp": ("spectral", 512), "c_sn_mp": ("spectral", 1024)}
SCALES = {"paper": ((128, 128, 64), 1), "tiny": ((32, 32, 16), 32)}  # (patch size, width divisor)
PRECISION = {"32": "32-true", "16-mixed": "16-mixed", "bf16": "bf16-mixed"}


@dataclass(frozen=True)
class Case:
    loop: str  # "project" | "authors"
    variant: str
    precision: str  # "32" | "16-mixed" | "bf16" (authors: "32" | "16-mixed")
    upsample: str = "nearest"
    channels_last: bool = False
    compile_g: bool = False


def default_cases() -> list[Case]:
    """The paper's four rows in the authors' loop, then the project's loop across its levers (SN-MP first)."""
    cases = [Case("authors", "gp", "32"), Case("authors", "sn", "32"), Case("authors", "sn_mp", "16-mixed"),
             Case("authors", "c_sn_mp", "16-mixed")]  # fmt: skip
    cases += [Case("project", "gp", "32"), Case("project", "sn", "32")]
    for precision in ("16-mixed", "bf16"):
        for upsample in ("nearest", "subpixel"):
            cases.append(Case("project", "sn_mp", precision, upsample))
    cases += [Case("project", "sn_mp", "bf16", "subpixel", channels_last=True),
              Case("project", "sn_mp", "bf16", "subpixel", compile_g=True),
              Case("project", "c_sn_mp", "bf16", "subpixel"), Case("project", "c_sn_mp", "16-mixed")]  # fmt: skip
    return cases


def build(case: Case, scale: str) -> tuple[Generator3D, WGANCritic3D]:
    size, divisor = SCALES[scale]
    norm, width = VARIANTS[case.variant]
    width //= divisor
    g = Generator3D(LATENT, width, out_size=size, upsample=case.upsample, init="authors")  # type: ignore[arg-type]
    return g, WGANCritic3D(ndf=width, in_size=size, norm=norm, init="authors")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- FLOPs
class Flops(TorchDispatchMode):
    """Sums `FlopCounterMode`'s per-op formulas over every dispatched op (double backward included)."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = FlopCounterMode(display=False).flop_registry
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in self.registry:
            self.total += self.registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def project_iteration(g: torch.nn.Module, d: torch.nn.Module, real: torch.Tensor) -> None:
    """The autograd work of `WGANGP._critic_step` + `_generator_step` (optimiser steps aside), for counting."""
    b = real.shape[0]
    with torch.no_grad():
        fake = g(torch.randn(b, LATENT, device=real.device))
    scores = d(torch.cat([real, fake]))
    eps = torch.rand(b, *[1] * (real.ndim - 1), device=real.device)
    loss = scores[b:].mean() - scores[:b].mean() + GP_WEIGHT * gradient_penalty(d, real, fake, eps)
    torch.autograd.grad(loss, list(d.parameters()))
    loss = -d(g(torch.randn(b, LATENT, device=real.device))).mean()
    torch.autograd.grad(loss, list(g.parameters()))  # critic frozen: no critic weight gradients


def authors_iteration(g: torch.nn.Module, d: torch.nn.Module, real: torch.Tensor,
                      step: Callable[[torch.Tensor, str], None] | None = None,
                      autocast: torch.dtype | None = None) -> None:  # fmt: skip
    """The authors' iteration (module docstring). `step(loss, "critic"|"generator")` does their backward and
    optimiser step (scaled by their one GradScaler under fp16); None: plain backward (FLOP counting)."""
    step = step or (lambda loss, _: loss.backward())
    ctx = (functools.partial(torch.autocast, real.device.type, dtype=autocast) if autocast is not None
           else contextlib.nullcontext)  # fmt: skip
    b = real.shape[0]
    d.zero_grad(set_to_none=True)
    with ctx():
        fake = g(torch.randn(b, LATENT, device=real.device))  # with graph, never detached
        d_real, d_fake = d(real).mean(), d(fake).mean()
        alpha = torch.rand(1, device=real.device)  # one ε for the whole batch
        x_hat = alpha * real + (1 - alpha) * fake
        if not x_hat.requires_grad:
            x_hat.requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
        penalty = GP_WEIGHT * (grad.flatten().float().norm(2) - 1) ** 2  # whole-batch norm
        loss_d = d_fake.float() - d_real.float() + penalty
    step(loss_d, "critic")
    g.zero_grad(set_to_none=True)
    d.requires_grad_(False)  # critic frozen in the G step (the note's count of their G step: 9.939 TFLOP)
    with ctx():
        loss_g = -d(g(torch.randn(b, LATENT, device=real.device))).float().mean()
    step(loss_g, "generator")
    d.requires_grad_(True)


def count_flops(case: Case, scale: str, batch: int) -> float:
    """Model FLOPs of one iteration of `case`, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        g, d = build(case, scale)
        real = torch.empty(batch, 2, *SCALES[scale][0])
    with Flops() as counter:
        (project_iteration if case.loop == "project" else authors_iteration)(g, d, real)
    return float(counter.total)


# --------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _memory(device: str) -> dict[str, float | None]:
    if device != "cuda":
        return {"peak_allocated_mib": None, "peak_reserved_mib": None}
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}  # fmt: skip


def _reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class RealBatches(Dataset):
    """`n` copies of one CPU batch (pre-collated): both loops copy it to the device each iteration."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch


class IterationTimer(L.Callback):
    """Wall time per training batch (1 critic + 1 generator step), synchronised; resets peak memory after warm-up."""

    def __init__(self, device: str, warmup: int) -> None:
        self.device, self.warmup, self.times = device, warmup, []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop.batch_idx == self.warmup:
            _reset_memory(self.device)
        sync(self.device)
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self.t0)


def real_batch(scale: str, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = SCALES[scale][0]
    return {"image": torch.rand(batch, 1, *size, generator=g) * 2 - 1,
            "label": (torch.rand(batch, 1, *size, generator=g) > 0.99).float()}  # fmt: skip


def time_project(case: Case, args: argparse.Namespace) -> tuple[list[float], dict]:
    g, d = build(case, args.scale)
    fused = args.device == "cuda"  # fused Adam: one kernel per step for the 135 M-parameter Linear
    adam = functools.partial(torch.optim.Adam, betas=(0.0, 0.9), fused=fused)
    model = WGANGP(g, d, functools.partial(adam, lr=2e-4), functools.partial(adam, lr=4e-4), LATENT, n_critic=1,
                   gp_weight=GP_WEIGHT, critic_precision="fp32", n_sample_grid=1)  # fmt: skip
    if case.channels_last:  # G always; the critic only without InstanceNorm (no channels-last IN kernel)
        model.generator.to(memory_format=torch.channels_last_3d)
        if VARIANTS[case.variant][0] != "instance":
            model.critic.to(memory_format=torch.channels_last_3d)
    if case.compile_g:  # G only: a compiled critic inside the penalty's double backward raises
        model.generator = torch.compile(model.generator)
    timer = IterationTimer(args.device, args.warmup)
    data = DataLoader(RealBatches(real_batch(args.scale, args.batch), args.warmup + args.iters), batch_size=None)
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=PRECISION[case.precision],  # type: ignore[arg-type]
                        max_steps=2 * (args.warmup + args.iters), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        benchmark=args.device == "cuda", callbacks=[timer])  # fmt: skip
    trainer.fit(model, data)
    # Lightning runs "16-mixed" as bf16-mixed on a CPU: the row says what ran
    return timer.times[args.warmup :], {**_memory(args.device), "precision_run": str(trainer.precision)}


def time_authors(case: Case, args: argparse.Namespace) -> tuple[list[float], dict]:
    device = torch.device(args.device)
    g, d = (net.to(device) for net in build(case, args.scale))
    adam = functools.partial(torch.optim.Adam, betas=(0.0, 0.9))
    opts = {"critic": adam(d.parameters(), lr=4e-4), "generator": adam(g.parameters(), lr=2e-4)}
    fp16 = case.precision == "16-mixed"
    scaler = torch.amp.GradScaler(args.device, enabled=fp16)  # ONE scaler for both optimisers

    def step(loss: torch.Tensor, which: str) -> None:
        scaler.scale(loss).backward()
        scaler.step(opts[which])
        if which == "generator":
            scaler.update()

    batch, times = real_batch(args.scale, args.batch), []
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            _reset_memory(args.device)
        sync(args.device)
        t0 = time.perf_counter()
        real = torch.cat([batch["image"], batch["label"]], 1).to(device)  # binary labels, as theirs
        authors_iteration(g, d, real, step, torch.float16 if fp16 else None)
        sync(args.device)
        times.append(time.perf_counter() - t0)
    ran = "fp16 autocast + one GradScaler" if fp16 else "32-true"
    return times[args.warmup :], {**_memory(args.device), "precision_run": ran}


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    times, memory = (time_project if case.loop == "project" else time_authors)(case, args)
    ms = 1000 * statistics.median(times)
    flops = count_flops(case, args.scale, args.batch)
    mfu = flops / (ms / 1000) / PEAK_FLOPS if args.device == "cuda" else None
    return {**asdict(case), "ms_per_iteration": ms, "samples_per_s": args.batch / (ms / 1000), **memory,
            "tflop_per_iteration": flops / 1e12, "mfu": mfu}  # fmt: skip


def conv3d_bf16_check() -> float:
    """Relative error of a bf16 conv3d against fp32 on G's last-block shape (CUDA only; cuDNN regression guard)."""
    x = torch.randn(4, 128, 128, 128, 64, device="cuda")
    w = torch.randn(64, 128, 3, 3, 3, device="cuda") * 0.05
    with torch.backends.cudnn.flags(allow_tf32=False):
        ref = torch.nn.functional.conv3d(x, w, padding=1)
    out = torch.nn.functional.conv3d(x.bfloat16(), w.bfloat16(), padding=1).float()
    return float((out - ref).norm() / ref.norm())


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    lines = ["| loop | variant | precision (ran as) | G form | ch-last | compile G | ms/it | samples/s | peak alloc MiB |"
             " peak reserved MiB | TFLOP/it | MFU |", "|" + "---|" * 12]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['loop']} | {r['variant']} | {r['precision']} ({r['precision_run']}) | {r['upsample']} | {r['channels_last']} |"
                     f" {r['compile_g']} | {r['ms_per_iteration']:.1f} | {r['samples_per_s']:.2f} |"
                     f" {fmt(r['peak_allocated_mib'], '.0f')} | {fmt(r['peak_reserved_mib'], '.0f')} |"
                     f" {r['tflop_per_iteration']:.4g} | {fmt(r['mfu'], '.1%')} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--cases", type=int, nargs="*", help="indices into the default case list (all if omitted)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (slow to build)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    cases = default_cases()
    cases = [cases[i] for i in args.cases] if args.cases else cases
    cases = [c for c in cases if not (args.no_compile and c.compile_g)]
    rows = []
    for case in cases:
        rows.append(run_case(case, args))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{args.scale} scale, batch {args.batch}, device {args.device}, torch {torch.__version__}\n{table(rows)}")
    result: dict[str, Any] = {"scale": args.scale, "device": args.device, "batch": args.batch, "rows": rows}
    if args.device == "cuda":
        result["conv3d_bf16_rel_error"] = conv3d_bf16_check()
        print(f"bf16 conv3d relative error vs fp32 on x (4, 128, 128, 128, 64): {result['conv3d_bf16_rel_error']:.2e}")
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
    return rows


if __name__ == "__main__":
    main()
