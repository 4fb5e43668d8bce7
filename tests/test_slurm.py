"""The real head/worker jobs on a real one-node SLURM cluster (Debian's slurm-wlm + munge).

Two Ray nodes on one host: the head on 127.0.0.2, the worker on 127.0.0.3. The container path is
exercised through a stand-in ``apptainer`` first on PATH, which checks its arguments, records the
command and runs it on the host (the image's /opt/venv/bin stands in as the project's .venv/bin).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness.records import RunRecord
from harness.tracking import runs_of
from slurm_cluster import ClusterUnavailable, start

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
HEAD = ROOT / "slurm" / "head_node_raytune_pbt_hpo.slurm"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("CI") and os.geteuid() != 0:
        pytest.fail("CI must run the SLURM tests as root")
    try:
        c = start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield c
    c.run("scancel", "--user", "root")
    c.stop()


def _stand_in_apptainer(folder: Path, log: Path) -> Path:
    tool = folder / "apptainer"
    tool.write_text(f"""#!/usr/bin/env bash
# stand-in: apptainer exec --nv [--bind X]... IMAGE CMD...
set -euo pipefail
[[ "$1" == exec ]] || {{ echo "stand-in apptainer: expected exec, got $1" >&2; exit 64; }}
shift
[[ "$1" == --nv ]] || {{ echo "stand-in apptainer: --nv missing" >&2; exit 64; }}
shift
while [[ "$1" == --bind ]]; do [[ -e "$2" ]] || {{ echo "bind $2 missing" >&2; exit 64; }}; shift 2; done
image="$1"; shift
[[ -f "$image" ]] || {{ echo "stand-in apptainer: no image $image" >&2; exit 64; }}
echo "$image :: $*" >> {log}
PATH="{ROOT / '.venv' / 'bin'}:$PATH" exec "$@"
""")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return tool


def _submit(cluster, tmp: Path, extra_env: dict[str, str], *sbatch_args: str) -> tuple[int, Path, str]:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    env = {
        **os.environ, **cluster.env,
        "HARNESS_DIR": str(ROOT), "HARNESS_JOBS_DIR": str(tmp / "jobs"), "HARNESS_LOGS_DIR": str(logs),
        "RESULTS_DIR": str(tmp / "results"), "NODE_IP": "127.0.0.2", "WORKER_NODE_IP": "127.0.0.3",
        "PRESET": "smoke", "NUM_WORKERS": "1", "WORKER_SBATCH_ARGS": "--cpus-per-task=1",
        "HARNESS_ARGS": "--set budget.trial_iterations=12",  # a PBT population of 4
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_READY_TIMEOUT": "120",
        **extra_env,
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=1", f"--output={logs}/%x-%j.out", *sbatch_args, str(HEAD)],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=900,
    )
    job_id = done.stdout.strip().split(";")[0]
    return done.returncode, logs / f"ray_head_bloom_5epochs-{job_id}.out", job_id


def _stamp(line: str) -> float:
    return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()


@pytest.fixture(scope="module")
def pbt_job(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    calls = tmp / "apptainer-calls.txt"
    _stand_in_apptainer(fake_bin, calls)
    image = tmp / "harness.sif"
    image.write_text("stand-in image\n")
    rc, head_log, job_id = _submit(cluster, tmp, {"HARNESS_SIF": str(image), "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    text = head_log.read_text() if head_log.is_file() else "(no head log)"
    assert rc == 0, text[-6000:]
    return tmp, head_log, job_id, calls, image


def test_head_log_has_start_and_finish_banners(pbt_job):
    _, head_log, job_id, _, _ = pbt_job
    text = head_log.read_text()
    assert re.search(rf"^===== JOB {job_id} START : \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}} =====$", text, re.M)
    assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M)


def test_worker_ended_after_shutdown_txt(pbt_job):
    tmp, head_log, job_id, _, _ = pbt_job
    shutdown = tmp / "jobs" / job_id / "shutdown.txt"
    assert shutdown.read_text().strip() == "0"
    (worker_log,) = (tmp / "logs").glob("ray_worker_bloom_5epochs-*.out")
    lines = worker_log.read_text().splitlines()
    found = next(line for line in lines if "shutdown.txt found" in line)
    done = next(line for line in lines if "worker done (exit 0)" in line)
    assert _stamp(done) >= _stamp(found) >= int(shutdown.stat().st_mtime) - 1


def test_collected_tables_have_one_row_per_trial(pbt_job):
    tmp, head_log, _, _, _ = pbt_job
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "harness", "collect", str(head_log)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| trainable_")]
    assert len(rows) == 4
    assert "| total job time |" in done.stdout and "| best eval loss |" in done.stdout


def test_both_ray_nodes_ran_trials_and_mlflow_has_the_runs(pbt_job):
    tmp, _, _, _, _ = pbt_job
    (run_dir,) = [p for p in (tmp / "results").iterdir() if (p / "run_record.json").is_file()]
    record = RunRecord.load(run_dir)
    assert all(t.status == "TERMINATED" and t.iterations == 3 for t in record.trials)
    nodes = {row["node_ip"] for t in record.trials for row in t.history}
    assert nodes == {"127.0.0.2", "127.0.0.3"}
    runs = runs_of("hpo-smoke", f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    assert len(runs) == 5 and sum("mlflow.parentRunId" in r.data.tags for r in runs) == 4


def test_ray_and_python_ran_in_the_container_with_token_auth(pbt_job):
    tmp, head_log, job_id, calls, image = pbt_job
    commands = calls.read_text().splitlines()
    assert all(c.startswith(f"{image} :: ") for c in commands)
    assert any(":: ray start --head" in c and "--node-ip-address=127.0.0.2" in c for c in commands)
    assert any(":: ray start --block" in c and "--address=127.0.0.2:" in c and "--node-ip-address=127.0.0.3" in c
               for c in commands)
    assert any(":: python -m harness run --ray-address 127.0.0.2:" in c for c in commands)
    head_start = next(c for c in commands if "ray start --head" in c)
    assert "--include-dashboard=false" in head_start and "0.0.0.0" not in head_start
    token = tmp / "jobs" / job_id / "ray_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) == 64
    assert "RAY_AUTH_TOKEN_PATH=" in (tmp / "jobs" / job_id / "head.env").read_text()


def test_no_process_of_the_jobs_is_left(pbt_job, cluster):
    tmp, _, job_id, _, _ = pbt_job
    assert cluster.run("squeue", "-h").stdout.strip() == ""
    (worker_log,) = (tmp / "logs").glob("ray_worker_bloom_5epochs-*.out")
    worker_id = worker_log.stem.rsplit("-", 1)[1]
    # each job's Ray processes carry its private temp dir /tmp/ray-<jobid>-XXXX in their command line
    pattern = f"/tmp/ray-({job_id}|{worker_id})-|harness run --ray-address 127.0.0.2"
    deadline = time.monotonic() + 10
    left = ""
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.strip()
        if not left:
            break
        time.sleep(0.5)
    assert left == "", f"left behind:\n{left}"


def test_bad_override_fails_before_ray_starts(cluster, tmp_path):
    rc, head_log, job_id = _submit(cluster, tmp_path, {"LR_LOWER": "2e-4", "LR_UPPER": "1e-5"})
    text = head_log.read_text()
    assert rc == 2, text
    assert "error: LR_LOWER=0.0002 must be below LR_UPPER=1e-05" in text
    assert "START" in text and "FINISH" in text
    assert "starting Ray head" not in text and not (tmp_path / "jobs" / job_id).exists()
    assert not list((tmp_path / "logs").glob("ray_worker_*")), "no worker may be submitted"


def test_manual_grid_job_runs_the_sequential_grid_in_one_job(cluster, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **cluster.env, "HARNESS_DIR": str(ROOT), "HARNESS_JOBS_DIR": str(tmp_path / "jobs"),
           "RESULTS_DIR": str(tmp_path / "results"), "PRESET": "smoke", "HARNESS_ARGS": "--set budget.trial_iterations=12",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(["sbatch", "--wait", "--parsable", "--cpus-per-task=1", f"--output={logs}/%x-%j.out",
                           str(ROOT / "slurm" / "manual_grid_hpo.slurm")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    job_id = done.stdout.strip().split(";")[0]
    log = logs / f"manual_grid_bloom_5epochs-{job_id}.out"
    assert done.returncode == 0, log.read_text()[-4000:]
    collected = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "harness", "collect", str(log)],
                               capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr
    assert len([line for line in collected.stdout.splitlines() if line.startswith("| manual_")]) == 4
    assert re.search(rf"^\| job start \| .* \|$", collected.stdout, re.M) and "| total job time |" in collected.stdout
