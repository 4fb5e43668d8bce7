from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "slurm").glob("*.slurm")) + [ROOT / "slurm" / "common.sh", ROOT / ".ci" / "run"]


def test_batch_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs shellcheck (.ci/run); it is missing")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout


def test_scripts_follow_the_house_rules():
    for script in SCRIPTS:
        text = script.read_text()
        if script.suffix == ".slurm":
            assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
            assert "ray stop" not in text.replace("never `ray stop`", ""), script
            assert "sleep 10" not in text
    common = (ROOT / "slurm" / "common.sh").read_text()
    assert "ray stop" not in common.replace("Never `ray stop`", "")


def test_make_submit_refuses_before_sbatch_when_no_trial_fits(tmp_path):
    import stat
    import sys

    calls = tmp_path / "sbatch-calls"
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 123\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    base = ["make", "-s", f"PY={sys.executable}", "STAMP=", "submit-pbt", "NUM_WORKERS=0"]
    done = subprocess.run([*base, "CPUS_PER_NODE=20", "GPUS_PER_NODE=1", "SYSTEM_CPUS=2"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode != 0 and "no trial fits on any node" in done.stderr
    assert not calls.exists(), "nothing may be submitted"
    done = subprocess.run([*base, "CPUS_PER_NODE=20", "GPUS_PER_NODE=8", "SYSTEM_CPUS=2"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "population 12: 8 trial(s) will wait PENDING" in done.stdout  # the seed budget: 60 / 5 iterations
    args = calls.read_text().split()
    assert args[:2] == ["--cpus-per-task=20", "--gres=gpu:8"] and args[-1] == "slurm/head_node_raytune_pbt_hpo.slurm"
