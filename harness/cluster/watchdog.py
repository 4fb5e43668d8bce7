"""Ends every process a driver started when the driver dies without cleaning up (SIGKILL, the OOM
killer), from the driver's first second.

``ray.init(address="local")`` starts the GCS, the raylet, its agents and the trial workers under
the driver. Killed with SIGKILL, the driver cannot stop them: Ray's agents were seen alive 45 s
later, holding memory and ports, and a driver killed while Ray was still starting left its
``DashboardAgent`` and ``RuntimeEnvAgent`` behind. So ``python -m harness run`` calls
:func:`guard` on its first line, before Ray or anything else is started:

* it puts a mark in the driver's environment (``HARNESS_DRIVER_MARK``), which every process the
  driver starts inherits, however deep (Ray passes its environment on to the GCS, the raylet,
  its agents and its workers) and however briefly it was a child of the driver;
* it starts this watchdog in a session of its own (a signal to the driver's process group does
  not reach it), without the mark::

      python -m harness.cluster.watchdog <driver pid> <mark>

Every quarter second the watchdog looks at the driver and notes its descendants. Once the driver
is gone, it sends SIGTERM to every process still alive that it noted or that carries the mark,
then SIGKILL after 3 s, looks again for marked processes (one that was being started at that
moment), and exits. When the driver shut Ray down itself, it finds nothing and exits the same way.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from typing import Any

POLL_S = 0.25
GRACE_S = 3.0
#: The environment variable that marks the processes of one driver: ``<pid>-<random>``.
MARK = "HARNESS_DRIVER_MARK"
#: Set in the driver once its watchdog runs: the pid it guards.
GUARDED = "HARNESS_WATCHDOG_FOR"


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


def marked(mark: str, variable: str = MARK) -> list[Any]:
    """Live processes whose environment carries ``variable=mark`` (this one excluded)."""
    import psutil

    needle = f"{variable}={mark}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _end(procs: list[Any]) -> None:
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(procs, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass


def watch(driver_pid: int, mark: str = "") -> int:
    """Returns the number of processes it had to end."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        driver = None
    known: dict[int, float] = {}
    while driver is not None:
        try:
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        known.update(_tree(driver))
        time.sleep(POLL_S)
    known.pop(os.getpid(), None)
    ended = 0
    for _ in range(3):  # a process being started as the driver died shows up on the next look
        seen = {p.pid: p for p in _alive(known) + (marked(mark) if mark else [])}
        if not seen:
            break
        _end(list(seen.values()))
        ended += len(seen)
        known = {}
    if ended:
        print(f"harness watchdog: driver {driver_pid} is gone; ended {ended} process(es) it left", file=sys.stderr)
    return ended


def start(driver_pid: int | None = None, mark: str = "") -> subprocess.Popen:
    """Start the watchdog for this process (its own session; its output to this process's stderr)."""
    env = {k: v for k, v in os.environ.items() if k != MARK}
    return subprocess.Popen([sys.executable, "-m", "harness.cluster.watchdog", str(driver_pid or os.getpid()), mark],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)


_WATCHDOG: subprocess.Popen | None = None


def guard() -> None:
    """Mark this process's environment and start its watchdog, unless it already has one."""
    global _WATCHDOG
    if os.environ.get(GUARDED) == str(os.getpid()) and (_WATCHDOG is None or _WATCHDOG.poll() is None):
        return
    mark = f"{os.getpid()}-{secrets.token_hex(6)}"
    os.environ[MARK] = mark
    os.environ[GUARDED] = str(os.getpid())
    _WATCHDOG = start(os.getpid(), mark)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
