"""tofgan command line: LightningCLI (fit/validate/test/predict) plus a few tool commands.

`tofgan fit --config A.yaml --config B.yaml` trains any LightningModule/DataModule of the suite
(subclass mode: `class_path` in the configs picks them). Tool commands that are not Trainer
methods (simulate a cohort, synthesise a patch store, the demo) are plain functions exposed
through jsonargparse, so every command shares the same `--config`/`--help` behaviour.
`tofgan --help` lists every command; an unknown command is refused with the nearest names.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.resume_settings import ResumeSettingsCheck, ResumeSettingsError

#: One line each for `tofgan --help` (Lightning's own docstrings are cut mid-sentence there).
TRAINER_COMMANDS = {
    "fit": "train a model from --config files (configs/experiment/*.yaml); --ckpt_path resumes a run",
    "validate": "one validation epoch of a checkpoint (--ckpt_path)",
    "test": "evaluate a checkpoint on the test patients (U-Net: DSC/95HD/bAVD; GAN: FID/PRD; pix2pix: MAE/NRMSE/SSIM/PSNR)",
    "predict": "segment whole volumes with a U-Net checkpoint",
}
TOOL_DESCRIPTIONS = {
    "simulate": "simulate a TOF-MRA cohort (images, vessel labels, brain masks) from a study profile",
    "render-tof": "render a simulated TOF-MRA patient around a real vessel label file",
    "synthesize": "generate image/label patch pairs from a GAN checkpoint into a patch store",
    "select": "pick one of a run's per-epoch checkpoints by a rule and record why",
    "domain-extractor": "train the U-Net encoder that FID/PRD use as feature extractor (no download)",
    "grid-search": "U-Net hyper-parameter grid: fit each member, keep the best validation DSC, test it",
    "transfer": "transfer-learning sweep across cohorts: from scratch vs pretrained on synthetic pairs",
    "compare": "the 2D paper's Table 2 (--dims 3: the 3D paper's Table 3 and A.1): GANs side by side, U-Nets on real and synthetic patches",
    "demo": "the whole pipeline on a small simulated cohort: simulate, GAN, synthesize, U-Nets, report (--dims 3: the 3D paper's)",
    "audit": "membership-inference audit of a GAN checkpoint (train vs test patients): ROC, AUC, TPR at low FPR",
    "export": "write a synthetic store as a shareable NIfTI/npz dataset with checksums and a dataset card",
    "realism": "measure how TOF-like a cohort looks (noise, texture, contrast, blur, oracle threshold DSC)",
    "canaries": "write canary patches for the one-run DP audit (fit with --data.init_args.canaries, then audit --canaries)",
    "dp-sweep": "DP-WGAN privacy/utility sweep: per σ or target ε, train, select, synthesize, U-Net, DSC vs ε",
    "perfusion-compare": "pix2pix vs temp-pix2pix for the five perfusion maps: fit, fine-tune, test, thesis-style table and figure; resumes",
    "simulate-dsc": "simulate a DSC-MRI perfusion cohort: 4D series, brain mask, true and oSVD-pipeline CBF/CBV/MTT/Tmax/TTP maps",
}
#: Packages whose classes `tofgan fit --help` lists as known models / data modules (and configs may name by class).
SUITE_PACKAGES = ("lightning_modules", "datamodules")


def _tool_commands() -> dict[str, Callable[..., Any]]:
    """Imported lazily so `tofgan fit --help` does not pay for every tool's imports."""
    from simulation.cohort import simulate_cohort
    from metrics.dp_audit import write_canary_set
    from workflows.audit import audit
    from workflows.compare import compare
    from workflows.export import export
    from workflows.realism_report import realism_report
    from simulation.render import render_tof_nifti
    from workflows.demo import run_demo
    from workflows.domain_extractor import train_domain_extractor
    from workflows.dp_sweep import dp_sweep
    from workflows.grid_search import grid_search
    from workflows.perfusion_compare import perfusion_compare
    from workflows.select_checkpoint import select_checkpoint
    from workflows.simulate_dsc import simulate_dsc
    from workflows.synthesize import synthesize
    from workflows.transfer import transfer_sweep

    return {
        "simulate": simulate_cohort,
        "render-tof": render_tof_nifti,
        "synthesize": synthesize,
        "select": select_checkpoint,
        "domain-extractor": train_domain_extractor,
        "grid-search": grid_search,
        "transfer": transfer_sweep,
        "compare": compare,
        "demo": run_demo,
        "audit": audit,
        "export": export,
        "realism": realism_report,
        "dp-sweep": dp_sweep,
        "canaries": write_canary_set,
        "simulate-dsc": simulate_dsc,
        "perfusion-compare": perfusion_compare,
    }


TOOL_COMMANDS = tuple(TOOL_DESCRIPTIONS)
COMMANDS = (*TRAINER_COMMANDS, *TOOL_COMMANDS)


def overview() -> str:
    """The text of `tofgan --help`: every command with one line."""
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: tofgan <command> [options]      (`tofgan <command> --help`: the command's options)", "",
             "Training and evaluation (Lightning Trainer; model, data and trainer from --config files):"]
    lines += [f"  {name:<{width}}{text}" for name, text in TRAINER_COMMANDS.items()]
    lines += ["", "Tools:"]
    lines += [f"  {name:<{width}}{text}" for name, text in TOOL_DESCRIPTIONS.items()]
    return "\n".join(lines)


def _unknown_command(name: str) -> NoReturn:
    near = difflib.get_close_matches(name, COMMANDS, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    print(f"tofgan: {name!r} is not a command.{hint} `tofgan --help` lists the commands.", file=sys.stderr)
    raise SystemExit(2)


def _import_suite_classes() -> None:
    """So jsonargparse knows the suite's LightningModules and DataModules: `tofgan fit --help` lists them as
    known subclasses and a config may name them by class name alone. A module whose optional dependency is
    missing is left out of the list (a config naming its class still gets the import error)."""
    for package in SUITE_PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            try:
                importlib.import_module(f"{package}.{info.name}")
            except ImportError:
                continue


#: Warnings every tofgan run of a kind would print, about nothing the user can or should change.
EXPECTED_WARNINGS = (
    # Resuming writes into the new run's folder (the documented way), so the old folder's bookkeeping is dropped.
    r"The dirpath has changed from",
    # Lightning 2.6's own use of a torch pytree API that torch 2.13 deprecates.
    r".*isinstance\(treespec, LeafSpec\)",
)


def _quiet_expected_warnings() -> None:
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8").read()


def _checkpoint_as_data(config: Any) -> None:
    """Refuse `--weights_only false`, force `weights_only=True`, and read `--ckpt_path` as data before Lightning."""
    if config.get("weights_only") is False:
        raise ValueError("--weights_only false: tofgan reads checkpoints as data only (weights_only=True); re-save "
                         "the weights as a state dict from code you trust")
    if "weights_only" in config:
        config["weights_only"] = True
    path = config.get("ckpt_path")
    if path and os.path.isfile(path):
        from lightning_modules.checkpoints import safe_load

        safe_load(path, "checkpoint (--ckpt_path)", mmap=True)


class TofganCLI(LightningCLI):
    """LightningCLI that keeps W&B offline unless the user is logged in and checks resumed settings.

    `--allow_resume_changes key1,key2` lets `fit --ckpt_path` resume with those model/data settings changed
    (`callbacks.resume_settings`); the change is recorded in run_manifest.json.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--allow_resume_changes", type=str | None, default=None,
            help="Comma-separated settings (e.g. model.init_args.n_critic,data.init_args.patch_size) that "
                 "`fit --ckpt_path` may resume with changed; any other change of the model, data or seed is refused.",
        )  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's, without its warning about `args` given while sys.argv holds arguments: workflows
        (compare, demo, grid-search) run their fits through `main([...])` inside a `tofgan <tool>` process."""
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path`, Lightning rebuilds the model from the checkpoint's hyper-parameters, overriding
        the config. Here a model given in the config wins (so test-time settings such as `report_dir` or the
        sliding-window overlap can be changed); without one the checkpoint's hyper-parameters are used.

        The checkpoint is data, never code: it is first read with `lightning_modules.checkpoints.safe_load`
        (weights only; class paths of the suite's packages only, checked before any import) and Lightning
        then loads it with `weights_only=True` whatever torch's default; `--weights_only false` is refused.
        """
        subcommand = self.config.get("subcommand")
        if subcommand:
            _checkpoint_as_data(self.config[subcommand])
        model = self.config[subcommand].get("model") if subcommand else None
        if model is not None and model.get("class_path"):
            return
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # W&B by default, offline (files under the log dir) when the user is not logged in.
        if not _wandb_logged_in():
            os.environ.setdefault("WANDB_MODE", "offline")
        # W&B job type (gan-fit, unet-fit, unet-test, …) from the command and the model class, unless the config or
        # WANDB_JOB_TYPE sets one: Lightning starts the W&B run before any callback hook could set it.
        from callbacks.wandb_run import set_job_type

        subcommand = self.config.get("subcommand")
        if subcommand:
            set_job_type(subcommand, self.config[subcommand])


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the `tofgan` console script; tests call `main([...])`.

    Called with `args` (from Python), returns the LightningCLI object for Trainer commands (so workflows
    can read checkpoint paths) and the tool function's return value for tool commands. From the console
    script (`args` None) it returns None, which the script turns into exit status 0.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        result = _run(argv, from_python=args is not None)
    except ResumeSettingsError as err:
        if args is not None:
            raise
        raise SystemExit(f"tofgan: {err}") from None
    return result if args is not None else None


def _run(argv: list[str], from_python: bool) -> Any:
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        _unknown_command(argv[0])
    if argv[0] in TOOL_COMMANDS:
        from jsonargparse import CLI

        return CLI(_tool_commands()[argv[0]], args=argv[1:], as_positional=False, prog=f"tofgan {argv[0]}")
    _import_suite_classes()
    _quiet_expected_warnings()
    # From the console, LightningCLI reads sys.argv itself: DDP re-launches the other ranks from sys.argv.
    return TofganCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=ResumeSettingsCheck,
        save_config_kwargs={"overwrite": True},
        args=argv if from_python else None,
        parser_kwargs={"default_env": False, "prog": "tofgan"},
    )


if __name__ == "__main__":
    main()
