"""A real one-node SLURM cluster (Debian's slurm-wlm + munge) for the tests, as root, without
systemd or cgroups. Everything lives in one folder; ``stop()`` ends every daemon it started.

Also runnable by hand: ``python tests/slurm_cluster.py up /tmp/slurm`` prints the ``SLURM_CONF``
to export; ``python tests/slurm_cluster.py down /tmp/slurm`` stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be brought up here; the message is the reason to skip with."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM is not installed and the tests do not run as root (apt-get slurm-wlm munge)")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install slurm-wlm and munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    cpus: int

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **self.env},
                              timeout=timeout)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            if not pid_file.is_file():
                continue
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def start(root: Path, *, cpus: int | None = None, memory_mb: int = 16000, timeout_s: float = 30) -> Cluster:
    """Start munged, slurmctld and slurmd with their state under ``root``; wait until the node is idle."""
    ensure_installed()
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurmd needs root here (no cgroups/systemd delegation)")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    key, sock = root / "munge.key", root / "munge.socket"
    if not key.exists():
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
    subprocess.run(
        ["munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--log-file={root / 'log' / 'munged.log'}",
         f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}"],
        check=True, capture_output=True,
    )
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=harnesstest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={memory_mb // cpus // 2}
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root / 'log' / 'jobcomp.txt'}
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf), "-i"], check=True, capture_output=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True, env=env)
    cluster = Cluster(root=root, conf=conf, node=node, cpus=cpus)
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%T").stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.3)
    logs = "".join((root / "log" / f).read_text()[-800:] for f in ("slurmctld.log", "slurmd.log")
                   if (root / "log" / f).is_file())
    cluster.stop()
    raise ClusterUnavailable(f"the SLURM node did not become idle in {timeout_s:.0f} s (state {state!r}): {logs}")


if __name__ == "__main__":  # pragma: no cover - manual use
    action, folder = sys.argv[1], Path(sys.argv[2])
    if action == "up":
        c = start(folder)
        print(f"export SLURM_CONF={c.conf}")
    else:
        Cluster(root=folder.resolve(), conf=folder / "slurm.conf", node="", cpus=0).stop()
