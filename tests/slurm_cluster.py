"""A one-node SLURM cluster on this machine for tests/test_slurm.py: munged, slurmctld and slurmd of the Debian
packages (`.ci/run` installs them), run as root in the foreground from a private folder with a `slurm.conf` written
here (this machine's host name and CPUs, free ports, no accounting, no cgroups), and stopped again afterwards.

Daemons left by an earlier run that was killed are found through the pid file of their folder and stopped (only
those, by pid); every new folder gets its own ports and munge socket, so nothing else on the machine is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
LEFTOVERS = Path(tempfile.gettempdir()) / "tofgan-slurm-test-pids.json"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster (None: it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to run slurmd/slurmctld/munged (CI runs as root)"
    missing = [p for p in (*DAEMONS, *CLIENTS) if not (shutil.which(p) or Path(f"/usr/sbin/{p}").exists())]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _stop_pid(pid: int, marker: str) -> None:
    """SIGTERM (then SIGKILL) a process of an earlier run, only if its command line names that run's folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if marker not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def stop_leftovers() -> None:
    if not LEFTOVERS.is_file():
        return
    try:
        record = json.loads(LEFTOVERS.read_text())
    except json.JSONDecodeError:
        record = {}
    for pid in record.get("pids", []):
        _stop_pid(int(pid), record.get("folder", "//"))
    shutil.rmtree(record.get("folder", "//nonexistent"), ignore_errors=True)
    LEFTOVERS.unlink(missing_ok=True)


class LocalSlurm:
    """Start with `start()`, stop with `stop()` (idempotent); `env` is the environment clients need."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tofgan-slurm-"))  # short: the munge socket path has a limit
        self.folder.chmod(0o700)
        self.conf = self.folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        f = self.folder
        (f / "state").mkdir()
        (f / "spool").mkdir()
        self.conf.write_text("\n".join([
            "ClusterName=tofgantest", f"SlurmctldHost={host}",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={f / 'munge.sock'}",
            f"StateSaveLocation={f / 'state'}", f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}", f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}", f"SlurmdLogFile={f / 'slurmd.log'}",
            "SlurmUser=root", "SlurmdUser=root",
            "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "MpiDefault=none",
            "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2", "JobRequeue=1", "KillWait=5", "MinJobAge=600",
            f"NodeName={host} CPUs={os.cpu_count() or 1} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")  # fmt: skip

    def _spawn(self, *argv: str) -> None:
        log = open(self.folder / f"{Path(argv[0]).name}.out", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))  # fmt: skip
        LEFTOVERS.write_text(json.dumps({"folder": str(self.folder), "pids": [p.pid for p in self.procs]}))

    def start(self, timeout_s: float = 30.0) -> None:
        stop_leftovers()
        self.write_conf()
        key = self.folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        f = self.folder
        self._spawn(_exe("munged"), "-F", "--force", f"--key-file={key}", f"--socket={f / 'munge.sock'}",
                    f"--pid-file={f / 'munged.pid'}", f"--log-file={f / 'munged.log'}", f"--seed-file={f / 'munge.seed'}")
        time.sleep(0.5)
        self._spawn(_exe("slurmctld"), "-D", "-c", "-f", str(self.conf))
        self._spawn(_exe("slurmd"), "-D", "-f", str(self.conf))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() == "idle":
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.folder.glob("*.out")) + sorted(self.folder.glob("*.log")))

    def submit(self, script: str | Path, *args: str, options: list[str], cwd: Path, env: dict[str, str]) -> str:
        out = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], cwd=cwd,
                             env={**env, "SLURM_CONF": str(self.conf)}, capture_output=True, text=True, check=True)
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait(self, job_id: str, timeout_s: float, restarts: int = 0) -> dict[str, str]:
        """Wait until the job ended after `restarts` requeues; its final `scontrol show job` fields."""
        deadline = time.monotonic() + timeout_s
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                if int(info.get("Restarts", "0")) >= restarts or info["JobState"] != "COMPLETED":
                    return info
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                # a requeued job waits for its begin time; a test need not
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=self.env)
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout_s} s:\n{self.logs()}")

    def stop(self) -> None:
        if not self.procs:
            return
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # steps must end before slurmd goes, or slurmstepd outlives it
            out = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs = []
        LEFTOVERS.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
