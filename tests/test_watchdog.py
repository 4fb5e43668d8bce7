"""The watchdog ends what a killed driver started, from the driver's first second: also a process
that was started in the instant before the kill and had already left the driver's tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

#: A stand-in driver: guarded on its first line like `python -m harness run`, then it starts a
#: process that leaves its tree at once (double fork: reparented to init, as Ray's agents can be
#: when their parent dies first) and writes that process's pid, then waits to be killed.
DRIVER = """
import os, subprocess, sys, time
from harness.cluster import watchdog
watchdog.guard()
out = sys.argv[1]
time.sleep(0.5)
pid = os.fork()
if pid == 0:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    open(out, "w").write(str(grandchild.pid))
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(120)
"""


def test_a_process_that_left_the_drivers_tree_is_ended_when_the_driver_is_killed(tmp_path):
    out = tmp_path / "pid"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not out.is_file() or not out.read_text():
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    orphan = psutil.Process(int(out.read_text()))
    assert orphan.ppid() != driver.pid  # not in the driver's tree: only the environment mark finds it
    driver.kill()
    driver.wait()
    gone, _ = psutil.wait_procs([orphan], timeout=8)
    assert gone, "the orphan outlived its driver by 8 s"


def test_a_driver_that_exits_normally_leaves_its_watchdog_nothing_to_do(tmp_path):
    script = "from harness.cluster import watchdog; watchdog.guard(); print(watchdog._WATCHDOG.pid)"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    watcher = psutil.Process(int(done.stdout.strip()))
    gone, _ = psutil.wait_procs([watcher], timeout=5)
    assert gone and "ended" not in done.stderr
