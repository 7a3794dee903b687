"""Helpers of the launch tests (tests/launch): the launch scripts run for real: a one-node Slurm cluster with munge from Debian's packages
(installed with apt-get when missing and this is root), started in a temporary directory and
stopped after the tests, and a sweep that ends every process the tests started.

Every process a test starts carries ``TURNRL_LAUNCH_TEST=<its temp dir>`` in its environment
(the Slurm daemons, the jobs, Ray's processes and workers inherit it); the sweep ends exactly
those, by id, so a failing test leaves nothing running and nothing else on the machine (other
Ray instances, other users' jobs) is touched. No ``ray stop``: it ends every Ray of the user."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "TURNRL_LAUNCH_TEST"
SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo",
                  "munged")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str) -> Path:
    """A short path under /tmp: Ray's and munge's Unix sockets must fit in 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def marked_pids(marker_value: str) -> list[int]:
    """Processes whose environment holds ``TURNRL_LAUNCH_TEST=<marker_value>`` (not this one)."""
    needle = f"{MARKER}={marker_value}".encode() + b"\0"
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes() + b"\0"
        except OSError:  # gone, or not ours to read
            continue
        if b"\0" + needle in b"\0" + env:
            out.append(int(d.name))
    return out


def end_marked(marker_value: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every marked process, SIGKILL what is left after ``grace_s``; returns the pids
    that were still running when called."""
    found = marked_pids(marker_value)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in marked_pids(marker_value):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while marked_pids(marker_value) and time.monotonic() < deadline:
            time.sleep(0.2)
    return found


def _apt_install(packages: tuple[str, ...]) -> str | None:
    """apt-get install, non-interactive, without starting the packages' services (a temporary
    policy-rc.d, as in Docker images). Returns why it failed, or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root on a Debian/Ubuntu machine (apt-get install needs it)"
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # munge and slurmd would otherwise start with the system's config
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:  # empty or stale package lists
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "apt-get timed out"
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if res.returncode != 0:
        return "apt-get install failed: " + (res.stderr.strip().splitlines() or ["?"])[-1]
    return None


def ensure_slurm() -> None:
    """Slurm + munge on PATH, installed if missing; skips the test when that cannot be done."""
    if all(shutil.which(b) for b in SLURM_BINARIES):
        return
    why = _apt_install(SLURM_PACKAGES)
    missing = [b for b in SLURM_BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing) and "
                    f"{why or 'the install did not provide them'}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SlurmCluster:
    """One node (this machine) running munged, slurmctld and slurmd as root, all state in
    ``root``; client commands find it through ``SLURM_CONF`` in :meth:`env`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge.sock"
        self.baseline: set[int] = set()

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(self.root), **extra}

    def start(self) -> None:
        r = self.root
        r.chmod(0o755)  # munged: the socket's directory must be searchable by all
        (r / "munge.key").write_bytes(os.urandom(1024))
        (r / "munge.key").chmod(0o600)
        self._run(["munged", f"--key-file={r / 'munge.key'}", f"--socket={self.munge_socket}",
                   f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'munged.log'}",
                   f"--seed-file={r / 'munged.seed'}"])
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
        fields = dict(re.findall(r"(\w+)=(\S+)", node.stdout))
        self.node, cpus = fields["NodeName"], fields["CPUs"]
        for d in ("state", "spool"):
            (r / d).mkdir()
        # No cgroups (containers, gVisor): processes are tracked by parent id; no accounting
        # daemon, so job states come from `scontrol show job` (kept for MinJobAge seconds).
        self.conf.write_text(f"""\
ClusterName=turnrltest
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MinJobAge=3600
NodeName={self.node} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self._run(["slurmctld", "-f", str(self.conf)])
        self._run(["slurmd", "-f", str(self.conf)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env(),
                                 capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                self.baseline = set(marked_pids(str(self.root)))  # daemons and their helpers
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle: {self.logs()}")

    def _run(self, cmd: list[str]) -> None:
        """Start a daemon (it forks into the background and writes its pid file)."""
        res = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {res.stderr.strip()} {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def leftovers(self, wait_s: float = 30.0) -> list[str]:
        """Processes the jobs started that are still running after ``wait_s`` (pid and
        command line); [] once every job's processes have ended."""
        deadline = time.monotonic() + wait_s
        while True:
            left = [p for p in marked_pids(str(self.root)) if p not in self.baseline]
            if not left or time.monotonic() > deadline:
                return [f"{p}: {_cmdline(p)}" for p in left]
            time.sleep(0.5)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, ...)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env(),
                             capture_output=True, text=True, check=True).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def stop(self) -> list[int]:
        """Cancel every job, stop the daemons, end anything left; returns the pids that were
        still running after the daemons stopped (they should be none)."""
        env = self.env()
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = _pid_of(self.root / f"{name}.pid")
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
        return end_marked(str(self.root))


def tiny_ray_run(model_dir: Path, steps: int, *extra: str) -> list[str]:
    """Overrides for a `launcher=ray` run of the tiny model on the HF engine: 2 tasks x 2
    samples, 2 turns of 6 tokens, a checkpoint every step, in one Ray node's 2 CPUs."""
    return [f"model.name={model_dir}", "engine=hf", "sft.enabled=false",
            "eval.compare_stages=false", "trainer.wandb=disabled", "trainer.tasks_per_step=2",
            "algorithm.group_size=2", "algorithm.drop_uniform_groups=false",
            "tasks.train_size=16", "tasks.eval_size=2", "rollout.max_turns=2",
            "rollout.max_tokens_per_turn=6", "learner.autocast=fp32", "launcher.mode=sync",
            "launcher.cpus_per_rollout_worker=0.5", "launcher.cpus_per_learner=0.5",
            f"trainer.steps={steps}", "trainer.save_every=1", *extra]


def ray_ports_args() -> str:
    """`ray start` options moving the fixed default ports of a node (dashboard agent, client
    server) to free ones: other Ray instances may run on this machine."""
    return (f"--dashboard-agent-listen-port={free_port()} "
            f"--ray-client-server-port={free_port()}")


def check_run(run_dir: Path, steps: int) -> list[dict]:
    """The run's checkpoint of its last step verifies (manifest sizes + sha256), its manifest
    names that step, and metrics.jsonl has one RL row per step; returns the rows."""
    import json

    from rl.checkpoint import MANIFEST, verify

    ckpt = run_dir / "checkpoints" / f"step_{steps:06d}"
    assert verify(ckpt, deep=True) is None, verify(ckpt, deep=True)
    assert json.loads((ckpt / MANIFEST).read_text())["step"] == steps
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("stage") == "rl"]
    assert [r["step"] for r in rl] == list(range(steps)), [r.get("step") for r in rl]
    return rl
