"""tofgan command line: LightningCLI (fit/validate/test/predict) plus a few tool commands.

`tofgan fit --config A.yaml --config B.yaml` trains any LightningModule/DataModule of the suite
(subclass mode: `class_path` in the configs picks them). Tool commands that are not Trainer
methods (simulate a cohort, synthesise a patch store, the demo) are plain functions exposed
through jsonargparse, so every command shares the same `--config`/`--help` behaviour.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def _tool_commands() -> dict[str, Callable[..., Any]]:
    """Imported lazily so `tofgan fit --help` does not pay for every tool's imports."""
    from simulation.cohort import simulate_cohort
    from workflows.compare import compare
    from simulation.render import render_tof_nifti
    from workflows.demo import run_demo
    from workflows.domain_extractor import train_domain_extractor
    from workflows.grid_search import grid_search
    from workflows.select_checkpoint import select_checkpoint
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
    }


TOOL_COMMANDS = (
    "simulate", "render-tof", "synthesize", "select", "domain-extractor", "grid-search", "transfer", "compare", "demo",
)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8").read()


class TofganCLI(LightningCLI):
    """LightningCLI that keeps W&B offline unless the user is logged in."""

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path`, Lightning rebuilds the model from the checkpoint's hyper-parameters, overriding
        the config. Here a model given in the config wins (so test-time settings such as `report_dir` or the
        sliding-window overlap can be changed); without one the checkpoint's hyper-parameters are used.
        """
        subcommand = self.config.get("subcommand")
        model = self.config[subcommand].get("model") if subcommand else None
        if model is not None and model.get("class_path"):
            return
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # W&B by default, offline (files under the log dir) when the user is not logged in.
        if not _wandb_logged_in():
            os.environ.setdefault("WANDB_MODE", "offline")


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the `tofgan` console script; tests call `main([...])`.

    Called with `args` (from Python), returns the LightningCLI object for Trainer commands (so workflows
    can read checkpoint paths) and the tool function's return value for tool commands. From the console
    script (`args` None) it returns None, which the script turns into exit status 0.
    """
    argv = list(sys.argv[1:] if args is None else args)
    result = _run(argv, from_python=args is not None)
    return result if args is not None else None


def _run(argv: list[str], from_python: bool) -> Any:
    if argv and argv[0] in TOOL_COMMANDS:
        from jsonargparse import CLI

        return CLI(_tool_commands()[argv[0]], args=argv[1:], as_positional=False)
    # From the console, LightningCLI reads sys.argv itself (passing it again only triggers a warning).
    return TofganCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=argv if from_python else None,
        parser_kwargs={"default_env": False},
    )


if __name__ == "__main__":
    main()
