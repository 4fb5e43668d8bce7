"""Benchmarks measure; they never assert timings. Figures go to the pytest-benchmark JSON
(``make bench`` writes it under results/benchmarks/) as ``extra_info``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_bytes: int
    peak_processes: int
    output: str


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """PSS (shared pages split fairly) of a process and all its descendants: Ray's raylet, GCS, workers."""
    total, count = 0, 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total, count


def run_measured(args: list[str], tmp: Path, interval_s: float = 0.25) -> Measured:
    """Run ``python -m harness <args>`` and sample the whole process tree's memory until it exits."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp / "output.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
        root = psutil.Process(proc.pid)
        peak = [0, 0]

        def sample() -> None:
            while proc.poll() is None:
                mem, count = _tree_memory(root)
                peak[0], peak[1] = max(peak[0], mem), max(peak[1], count)
                time.sleep(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
    return Measured(proc.returncode, time.perf_counter() - start, peak[0], peak[1], log.read_text())
