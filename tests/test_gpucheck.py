"""`make gpu-check` at tiny shapes on CPU: the same three runs the GPU machine does (plain, DeepSpeed
ZeRO-2, an exploit with a new lr), through the harness's own trial segment, with no Ray or MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.trial import gpucheck

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration]


def test_the_dry_run_trains_both_ways_and_the_exploit_runs_with_the_new_lr(tmp_path, torch_extensions):
    blocked = "import sys\nfor name in ('ray', 'mlflow', 'datasets'):\n    sys.modules[name] = None\n"
    code = blocked + "from harness.trial.gpucheck import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["problems"] == []
    plain, zero2, exploit = result["runs"]
    assert (plain["run"], zero2["run"]) == ("fp32", "deepspeed-zero2")
    assert plain["iterations"] == zero2["iterations"] == 2 and exploit["iterations"] == 1
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 32) for r in result["runs"])
    assert exploit["optimizer_lr"] == gpucheck.EXPLOIT_LR and plain["optimizer_lr"] == gpucheck.LR
    assert exploit["checkpoint_restore_s"] > 0 and plain["checkpoint_save_s"] > 0
    assert "| deepspeed-zero2 | 2 |" in (tmp_path / "gpu-check.md").read_text()


def test_without_a_gpu_the_real_check_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness.trial.gpucheck", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--dry-run" in done.stderr


def test_the_seed_shape_is_bloom_560m():
    s = gpucheck.SEED
    assert (s.hidden_size, s.n_layer, s.n_head, s.vocab_size) == (1024, 24, 16, 250880)
    assert (s.train_samples, s.length, s.iterations) == (200, 512, 2)
