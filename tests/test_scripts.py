from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

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


def _fake_sbatch(tmp_path):
    import stat

    calls = tmp_path / "sbatch-calls"
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\nenv | grep -E '^(HARNESS_SIF|STRATEGY|SYSTEM_CPUS|WORKER_SBATCH_ARGS|CACHE_DIR)=' >> {calls}\n"
                    f"echo \"$@\" >> {calls}\necho 123\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return calls, {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


def _make(env, *args):
    import sys

    return subprocess.run(["make", "-s", f"PY={sys.executable}", "STAMP=", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def _prepared_seed_cache(cache: Path) -> Path:
    """What `make prepare PRESET=seed` leaves where the pre-flight looks (the files, not the weights)."""
    from harness.trial.cache import dataset_slot, model_slot

    model = model_slot(cache, "bigscience/bloom-560m")
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("{}")
    data = dataset_slot(cache, "hub:rajpurkar/squad")
    data.mkdir(parents=True)
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("")
    return cache


def test_make_submit_refuses_before_sbatch_when_no_trial_fits(tmp_path):
    calls, env = _fake_sbatch(tmp_path)
    done = _make(env, "submit-pbt", "NUM_WORKERS=0", "SIF=none", "CPUS_PER_NODE=20", "GPUS_PER_NODE=1", "SYSTEM_CPUS=2",
                 f"CACHE_DIR={_prepared_seed_cache(tmp_path / 'cache')}")
    assert done.returncode != 0 and "no trial fits on any node" in done.stderr
    assert not calls.exists(), "nothing may be submitted"


def test_make_submit_refuses_before_sbatch_when_the_hub_material_is_not_prepared(tmp_path):
    image = tmp_path / "harness.sif"
    image.write_text("image")
    calls, env = _fake_sbatch(tmp_path)
    done = _make(env, "submit-pbt", f"SIF={image}", f"CACHE_DIR={tmp_path / 'empty'}")
    assert done.returncode != 0 and not calls.exists(), "nothing may be submitted"
    line = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert "has no model 'bigscience/bloom-560m' and no dataset 'hub:rajpurkar/squad'" in line
    assert line.endswith(f"make prepare PRESET=seed CACHE_DIR={tmp_path / 'empty'}")


def test_the_seed_example_submits_node_sized_jobs_with_the_documented_defaults(tmp_path):
    """Cnode=20, Gnode=8, W=2, Cw=2, Gw=1, Csys=2 on every node: Tnode=4, and both jobs ask for the node."""
    image = tmp_path / "harness.sif"
    image.write_text("image")
    calls, env = _fake_sbatch(tmp_path)
    done = _make(env, "submit-pbt", f"SIF={image}", f"CACHE_DIR={_prepared_seed_cache(tmp_path / 'cache')}")
    assert done.returncode == 0, done.stderr
    assert "2 node(s) hold 8 trial(s) at once (4 + 4;" in done.stdout
    assert "population 12: 4 trial(s) will wait PENDING" in done.stdout  # the seed budget: 60 / 5 iterations
    text = calls.read_text()
    args = text.splitlines()[-1].split()
    assert args[:3] == ["--job-name=hpo-pbt-seed", "--cpus-per-task=20", "--gres=gpu:8"]
    assert args[-1] == "slurm/head_node_raytune_pbt_hpo.slurm"
    assert f"HARNESS_SIF={image}" in text and "SYSTEM_CPUS=2" in text and "STRATEGY=pbt" in text
    assert "WORKER_SBATCH_ARGS=--cpus-per-task=20 --gres=gpu:8" in text


def test_the_old_strategy_variable_of_make_submit_is_refused_with_the_target_to_use(tmp_path):
    calls, env = _fake_sbatch(tmp_path)
    done = _make(env, "submit-pbt", "STRATEGY=fifo", "SIF=none")
    assert done.returncode == 2 and not calls.exists()
    assert done.stderr.splitlines()[0] == "error: STRATEGY=fifo no longer chooses what make submit-pbt runs; run make submit-fifo"


def test_make_submit_manual_uses_the_head_job_and_refuses_without_an_image(tmp_path):
    calls, env = _fake_sbatch(tmp_path)
    cache = _prepared_seed_cache(tmp_path / "cache")
    done = _make(env, "submit-manual", f"SIF={tmp_path / 'missing.sif'}", f"CACHE_DIR={cache}")
    assert done.returncode == 2 and "SIF=" in done.stderr and "make container" in done.stderr
    assert not calls.exists()
    done = _make(env, "submit-manual", "SIF=none", f"CACHE_DIR={cache}")
    assert done.returncode == 0, done.stderr
    text = calls.read_text()
    assert "STRATEGY=manual" in text and "HARNESS_SIF=none" in text
    args = text.splitlines()[-1].split()
    assert args[0] == "--job-name=hpo-manual-seed" and args[-1] == "slurm/head_node_raytune_pbt_hpo.slurm"


def test_make_submit_launch_allocation_asks_once_for_every_node(tmp_path):
    """LAUNCH=allocation: one job of NUM_WORKERS + 1 nodes, one task each (the sequential grid: one
    node); a launch mode that does not exist is refused before anything is queued."""
    image = tmp_path / "harness.sif"
    image.write_text("image")
    calls, env = _fake_sbatch(tmp_path)
    cache = f"CACHE_DIR={_prepared_seed_cache(tmp_path / 'cache')}"
    done = _make(env, "submit-pbt", "LAUNCH=sometimes", f"SIF={image}", cache)
    assert done.returncode == 2 and not calls.exists()
    assert done.stderr.splitlines()[0].startswith("error: LAUNCH=sometimes is not a launch mode; use LAUNCH=jobs")
    done = _make(env, "submit-pbt", "LAUNCH=allocation", "NUM_WORKERS=2", f"SIF={image}", cache)
    assert done.returncode == 0, done.stderr
    assert "3 node(s) hold 12 trial(s) at once" in done.stdout
    args = calls.read_text().splitlines()[-1].split()
    assert args[:5] == ["--job-name=hpo-pbt-seed", "--nodes=3", "--ntasks-per-node=1", "--cpus-per-task=20",
                        "--gres=gpu:8"]
    assert args[-1] == "slurm/allocation_raytune_hpo.slurm"
    done = _make(env, "submit-manual", "LAUNCH=allocation", "NUM_WORKERS=2", f"SIF={image}", cache)
    assert done.returncode == 0, done.stderr
    args = calls.read_text().splitlines()[-1].split()
    assert args[:3] == ["--job-name=hpo-manual-seed", "--nodes=1", "--ntasks-per-node=1"]


def _bash(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source slurm/common.sh; {script}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HARNESS_JOBS_DIR": "/tmp/harness-test-jobs", **(env or {})})


def test_job_scripts_read_assignments_without_evaluating_them():
    ok = _bash("read_assignments '^[0-9]+$' A B <<< $'A=1\nB=22'; echo \"$A $B\"")
    assert ok.returncode == 0 and ok.stdout.strip() == "1 22"
    for bad in ("A=1\nB=$(touch /tmp/pwned)", "A=1\nC=2\nB=3", "A=1", "A=1\nB=2; rm -rf x"):
        done = _bash(f"read_assignments '^[0-9]+$' A B <<< $'{bad}'")
        assert done.returncode != 0 and "ERROR" in done.stderr, bad
    assert not Path("/tmp/pwned").exists()


def test_job_scripts_redact_credentials_in_uris():
    done = _bash("redact_uri 'https://alice:pw@mlflow.example.org:5000/x'")
    assert done.stdout.strip() == "https://***@mlflow.example.org:5000/x"


def test_ray_start_is_retried_on_a_port_conflict_and_not_on_other_failures(tmp_path):
    """A stand-in `ray` in the venv fails like a real bind conflict the first time, then starts."""
    import stat
    import sys

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    count = tmp_path / "count"
    (venv / "ray").write_text(f"""#!/usr/bin/env bash
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}
echo "$@" >> {tmp_path}/ray-calls
if [[ "$RAY_MODE" == conflict && $n == 1 ]]; then echo "OSError: [Errno 98] Address already in use" >&2; exit 1; fi
if [[ "$RAY_MODE" == broken ]]; then echo "some other failure" >&2; exit 1; fi
echo "Ray runtime started."
sleep 30
""")
    (venv / "ray").chmod(0o755 | stat.S_IEXEC)
    script = f"RAY_TMP={tmp_path}; HARNESS_SIF=none; HARNESS_VENV={venv.parent}; start_ray_node worker --address=x; echo started; kill $RAY_PID"
    done = _bash(script, {"RAY_MODE": "conflict"})
    assert done.returncode == 0 and "started" in done.stdout, done.stderr
    assert "a port was taken meanwhile; choosing new ports" in done.stdout
    first, second = (tmp_path / "ray-calls").read_text().splitlines()
    assert first != second, "new ports on the second attempt"
    count.unlink()
    done = _bash(script, {"RAY_MODE": "broken"})
    assert done.returncode != 0 and "ray start failed" in done.stderr and "some other failure" in done.stderr
    assert count.read_text().strip() == "1"


def test_a_failed_squeue_call_is_no_answer_about_the_head_job(tmp_path):
    """The worker stops only on definite answers: a squeue that fails (slurmctld restarting) decides nothing."""
    import stat

    fake = tmp_path / "squeue"
    fake.write_text('#!/bin/sh\ncase "$SQUEUE_MODE" in\n'
                    '  running) echo RUNNING ;;\n  done) ;;\n'
                    '  invalid) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;\n'
                    '  down) echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1 ;;\n'
                    'esac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    answers = {}
    for mode in ("running", "done", "invalid", "down"):
        done = _bash("job_state 42", {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SQUEUE_MODE": mode})
        answers[mode] = done.stdout.strip()
    assert answers == {"running": "RUNNING", "done": "GONE", "invalid": "GONE", "down": "UNKNOWN"}
    worker = (ROOT / "slurm" / "worker_node_raytune_pbt_hpo.slurm").read_text()
    assert 'UNKNOWN) log "squeue did not answer' in worker and "HEAD_GONE_CHECKS" in worker
