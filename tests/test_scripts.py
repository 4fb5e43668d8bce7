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
