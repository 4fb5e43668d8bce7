"""One short seeded soak (tools/soak.py, `make soak` for the long ones): smoke PBT runs under
random faults of every kind, from the first second of a start on, against a real `mlflow server`.
Every run completes with each trial's iterations, MLflow holds one parent per run and one child per
trial with one value per step and none RUNNING, no process outlives a killed driver by 10 s, and
no driver prints a traceback or dies of SIGUSR1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_loses_nothing_and_leaves_nothing(tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--seed", "7", "--faults", "6",
                           "--gap", "3", "9", "--max-minutes", "6", "--out", str(out),
                           "--set", "budget.trial_iterations=12", "--set", "budget.slots=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=480)
    figures = json.loads((out / "soak.json").read_text())
    assert done.returncode == 0 and figures["ok"], done.stdout[-4000:] + done.stderr[-3000:]
    assert sum(figures["faults_sent"].values()) == 6 and figures["runs_completed"] >= 1
    assert figures["resumes_refused"] == figures["tracebacks"] == figures["usr1_exit_138"] == 0
    assert figures["kills_with_leftovers"] == figures["left_at_end"] == figures["mlflow_running_left"] == 0
