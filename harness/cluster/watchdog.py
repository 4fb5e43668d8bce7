"""Ends an embedded Ray's processes when its driver dies without cleaning up (SIGKILL, OOM killer).

``ray.init(address="local")`` starts the GCS, the raylet, its agents and the trial workers under
the driver. Killed with SIGKILL, the driver cannot stop them, and Ray's agents were seen alive
45 s later, holding memory and ports. The driver starts this watchdog in a session of its own
(so a signal to the driver's process group does not reach it):

    python -m harness.cluster.watchdog <driver pid>

Every half second it notes the driver's descendants; once the driver is gone it sends SIGTERM to
those still alive (the same processes: pid and start time), then SIGKILL after 3 s, and exits.
When the driver shuts Ray down itself, the watchdog finds nothing left and exits the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

POLL_S = 0.5
GRACE_S = 3.0


def _tree(root: Any) -> dict[int, float]:
    import psutil

    out = {}
    try:
        for proc in root.children(recursive=True):
            try:
                out[proc.pid] = proc.create_time()
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _alive(known: dict[int, float]) -> list[Any]:
    import psutil

    procs = []
    for pid, created in known.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                procs.append(proc)
        except psutil.Error:
            continue
    return procs


def watch(driver_pid: int) -> int:
    """Returns the number of processes it had to end."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, float] = {}
    while True:
        try:
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        known.update(_tree(driver))
        known = {pid: t for pid, t in known.items() if pid != os.getpid()}
        time.sleep(POLL_S)
    left = _alive(known)
    for proc in left:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(left, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if left:
        print(f"harness watchdog: driver {driver_pid} is gone; ended {len(left)} Ray process(es) it left",
              file=sys.stderr)
    return len(left)


def start(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for this process (its own session; its output to this process's stderr)."""
    return subprocess.Popen([sys.executable, "-m", "harness.cluster.watchdog", str(driver_pid or os.getpid())],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
