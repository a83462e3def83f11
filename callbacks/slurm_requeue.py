"""Pre-emption under SLURM: Lightning's auto-requeue (save `hpc_ckpt_N.ckpt`, `scontrol requeue`), run at a batch
boundary on every rank at once, so the requeued job resumes to the weights an uninterrupted run reaches.

SLURM sends `--signal=USR1@<seconds>` to every task before the time limit (or `scancel --signal=USR1 <job>`). Lightning's
`SLURMEnvironment` (auto-detected under srun, `auto_requeue=True`) saves and requeues from inside the signal handler,
i.e. wherever the interpreter is: between the critic and the generator update of one batch (a state no checkpoint
of the suite's resume path describes) or, under DDP, while the other rank waits in a gradient all-reduce (the
handler's barrier then pairs with the wrong collective). This callback installs its own handler first, which only
records the signal (Lightning leaves a handler it finds in place); every `check_every_n_batches` training batches the
ranks agree on whether any of them was signalled (one boolean all-reduce) and, if so, all call Lightning's own save-and-requeue
(`_SignalConnector._slurm_sigusr_handler_fn`) together. Training then goes on until SLURM stops the job.

The requeued job runs the same command; with no `--ckpt_path` Lightning resumes from the newest
`<trainer.default_root_dir>/hpc_ckpt_N.ckpt` (scripts/slurm_fit.sh gives each job its own folder), read with
`weights_only=True` (the CLI forces it); this callback checks its class paths against the suite's allow-list
(`lightning_modules.checkpoints.check_checkpoint_classes`) as the CLI does for `--ckpt_path` files, and
`callbacks.resume_settings.ResumeSettingsCheck` refuses it if the model, data or seed settings changed.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def is_hpc_checkpoint(path: Any) -> bool:
    """A checkpoint Lightning wrote on a requeue signal (`hpc_ckpt_<N>.ckpt`) and picks by itself on restart."""
    return bool(path) and Path(str(path)).name.startswith("hpc_ckpt_") and str(path).endswith(".ckpt")


class SlurmPreemption(Callback):
    """Defers SLURM's requeue signal to the end of a training batch; see the module docstring.

    Inert outside SLURM or with `SLURMEnvironment(auto_requeue=False)`.

    Args:
        check_every_n_batches: how often the ranks agree on the signal (under DDP one small all-reduce, which waits
            for the GPU); the signal's lead time (`--signal=USR1@T`) must cover this many batches plus one save.
    """

    def __init__(self, check_every_n_batches: int = 10) -> None:
        if check_every_n_batches < 1:
            raise ValueError(f"SlurmPreemption: check_every_n_batches must be >= 1, got {check_every_n_batches}")
        self.check_every_n_batches = check_every_n_batches
        self.signalled = False
        self.active = False
        self.requeued = False
        self._previous: Any = None
        self._signum: int | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        env = trainer._accelerator_connector.cluster_environment
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None):
            return
        # Registered before Lightning's signal connector runs, which then keeps this handler for the signal.
        self._signum = int(env.requeue_signal)
        self._previous = signal.signal(self._signum, self._on_signal)
        self.active = True

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Lightning picked the newest hpc checkpoint itself (read with weights_only=True): check its class paths
        as the CLI checks a `--ckpt_path` file."""
        if is_hpc_checkpoint(trainer.ckpt_path):
            from lightning_modules.checkpoints import check_checkpoint_classes

            check_checkpoint_classes(checkpoint, str(trainer.ckpt_path))
            log.info("resuming the requeued SLURM job from %s", trainer.ckpt_path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not self.active or self.requeued:
            return
        if (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % self.check_every_n_batches:
            return  # the same batches on every rank, so the collective below always pairs up
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.requeued = True
        signum = signal.Signals(self._signum or signal.SIGUSR1)
        trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)  # Lightning's hpc save + scontrol requeue

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.active and self._signum is not None:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
        self.active = False
