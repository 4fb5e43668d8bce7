"""The real head/worker jobs on a real one-node SLURM cluster (Debian's slurm-wlm + munge).

Two Ray nodes on one host: the head on 127.0.0.2, the worker on 127.0.0.3. The container path is
exercised through a stand-in ``apptainer`` first on PATH, which checks its arguments, records the
command and runs it on the host (the image's /opt/venv/bin stands in as the project's .venv/bin,
its labels.json as a file beside it). Every job reads a cache filled by ``harness prepare`` first.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness.contract import events
from harness.contract.rundir import RunDir
from harness.reporting.tracking import runs_of
from conftest import serve_mlflow
from slurm_cluster import ClusterUnavailable, start

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
HEAD = ROOT / "slurm" / "head_node_raytune_pbt_hpo.slurm"
ALLOCATION = ROOT / "slurm" / "allocation_raytune_hpo.slurm"
#: The one-node test cluster's stand-in for NUM_WORKERS + 1 nodes: two tasks on its one node, one Ray
#: node each (the head on 127.0.0.2, the worker on 127.0.0.3), as make submit-* LAUNCH=allocation
#: asks for --nodes=2 --ntasks-per-node=1 on a real cluster.
TWO_TASKS = ("--nodes=1", "--ntasks-per-node=2")
PY = str(ROOT / ".venv" / "bin" / "python")
SMALL = "--set budget.trial_iterations=12"  # a PBT population of 4, a grid of 4
IMAGE_SHA = "0123456789abcdef0123456789abcdef01234567"


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
export HARNESS_IMAGE_LABELS="$image.labels.json"   # the image's /.singularity.d/labels.json
PATH="{ROOT / '.venv' / 'bin'}:$PATH" exec "$@"
""")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return tool


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, str]:
    """What a user does once on the login node: make prepare (here the tiny model, synthetic data),
    into one cache that every job of this module reads (CACHE_DIR, as make submit-* passes it)."""
    cache = tmp_path_factory.mktemp("prepared-cache")
    done = subprocess.run([PY, "-m", "harness", "prepare", "--preset", "smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HARNESS_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    return {"CACHE_DIR": str(cache)}


def _env(cluster, tmp: Path, extra_env: dict[str, str]) -> dict[str, str]:
    (tmp / "logs").mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items()  # the head job itself must switch the hub off
           if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "HARNESS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env = {
        **env, **cluster.env,
        "HARNESS_DIR": str(ROOT), "HARNESS_JOBS_DIR": str(tmp / "jobs"), "HARNESS_LOGS_DIR": str(tmp / "logs"),
        "RESULTS_DIR": str(tmp / "results"), "NODE_IP": "127.0.0.2", "WORKER_NODE_IP": "127.0.0.3",
        "PRESET": "smoke", "NUM_WORKERS": "1", "WORKER_SBATCH_ARGS": "--cpus-per-task=1", "SYSTEM_CPUS": "0",
        "HARNESS_ARGS": SMALL, "HARNESS_SIF": "none", "RAY_READY_TIMEOUT": "120",
        **extra_env,
    }
    return env


def _submit(cluster, tmp: Path, extra_env: dict[str, str], *sbatch_args: str,
            name: str = "hpo-pbt-smoke", script: Path = HEAD) -> tuple[int, Path, str]:
    """Submit the head job and wait for it: (its exit code, its log, its id). Polled every half
    second (sbatch --wait sleeps up to 10 s between its own polls)."""
    logs = tmp / "logs"
    done = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=1", f"--job-name={name}", f"--output={logs}/%x-%j.out",
         *sbatch_args, str(script)],
        capture_output=True, text=True, env=_env(cluster, tmp, extra_env), cwd=tmp, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 900
    while True:
        state = dict(field.split("=", 1) for field in cluster.run("scontrol", "show", "job", "-o", job_id).stdout.split()
                     if "=" in field)
        if state.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
            return int(state["ExitCode"].split(":")[0]), logs / f"{name}-{job_id}.out", job_id
        assert time.monotonic() < deadline, f"job {job_id} still {state.get('JobState')}"
        time.sleep(0.5)


class Watch(threading.Thread):
    """While a job runs: every listening TCP socket and its process (ss -ltnpH), and the token's mode."""

    def __init__(self, jobs: Path):
        super().__init__(daemon=True)
        self.jobs, self.listeners, self.token_modes = jobs, set(), set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                fields = line.split()
                procs = re.findall(r'\("([^"]+)",pid=(\d+)', line)
                for name, _ in procs:
                    self.listeners.add((fields[3], name))
            for token in self.jobs.glob("*/ray_token"):
                try:
                    self.token_modes.add(stat.S_IMODE(token.stat().st_mode))
                except FileNotFoundError:
                    pass
            self.done.wait(0.5)


def _stamp(line: str) -> float:
    return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()


@pytest.fixture(scope="module")
def pbt_job(cluster, prepared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    calls = tmp / "apptainer-calls.txt"
    _stand_in_apptainer(fake_bin, calls)
    image = tmp / "harness.sif"
    image.write_text("stand-in image\n")
    (tmp / "harness.sif.labels.json").write_text(json.dumps({"harness.git_sha": IMAGE_SHA}))
    (tmp / "jobs").mkdir()
    watch = Watch(tmp / "jobs")
    watch.start()
    try:
        rc, head_log, job_id = _submit(cluster, tmp, {"HARNESS_SIF": str(image), "PATH": f"{fake_bin}:{os.environ['PATH']}",
                                                      **prepared})
    finally:
        watch.done.set()
        watch.join()
    text = head_log.read_text() if head_log.is_file() else "(no head log)"
    assert rc == 0, text[-6000:]
    return tmp, head_log, job_id, calls, image, watch


def test_head_log_has_start_and_finish_banners(pbt_job):
    _, head_log, job_id, *_ = pbt_job
    text = head_log.read_text()
    assert re.search(rf"^===== JOB {job_id} START : \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}} =====$", text, re.M)
    assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M)


def test_worker_ended_after_shutdown_txt(pbt_job):
    tmp, head_log, job_id, *_ = pbt_job
    shutdown = tmp / "jobs" / job_id / "shutdown.txt"
    assert shutdown.read_text().strip() == "0"
    (worker_log,) = (tmp / "logs").glob("hpo-pbt-smoke-worker-*.out")
    lines = worker_log.read_text().splitlines()
    found = next(line for line in lines if "shutdown.txt found" in line)
    done = next(line for line in lines if "worker done (exit 0)" in line)
    assert _stamp(done) >= _stamp(found) >= int(shutdown.stat().st_mtime) - 1


def _collect(log: Path) -> str:
    done = subprocess.run([PY, "-m", "harness", "collect", str(log)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_collected_tables_have_one_row_per_trial(pbt_job):
    _, head_log, *_ = pbt_job
    out = _collect(head_log)
    assert len([line for line in out.splitlines() if re.match(r"\| c\d\d \|", line)]) == 4
    assert "| total job time |" in out and "| best eval loss |" in out


def test_both_ray_nodes_ran_trials_and_mlflow_says_which_code_ran(pbt_job):
    tmp, _, _, _, image, _ = pbt_job
    (run_dir,) = [p for p in (tmp / "results").iterdir() if (p / "run_record.json").is_file()]
    record = RunDir(run_dir).record()
    assert all(t.status == "TERMINATED" and t.iterations == 3 for t in record.trials)
    nodes = {row.node_ip for t in record.trials for row in t.history}
    assert nodes == {"127.0.0.2", "127.0.0.3"}
    runs = runs_of("hpo-smoke", f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    assert len(runs) == 5 and sum("mlflow.parentRunId" in r.data.tags for r in runs) == 4
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    tags = parent.data.tags
    assert (tags["code"], tags["image"], tags["image_git_sha"]) == ("image", str(image), IMAGE_SHA)


def test_ray_and_python_ran_in_the_container_with_a_token_that_is_gone_afterwards(pbt_job):
    tmp, head_log, job_id, calls, image, watch = pbt_job
    commands = calls.read_text().splitlines()
    assert all(c.startswith(f"{image} :: ") for c in commands)
    check = next(i for i, c in enumerate(commands) if ":: python -m harness prepare --check" in c)
    head = next(i for i, c in enumerate(commands) if ":: ray start --block" in c and "--head" in c)
    assert check < head, "the cache is checked before Ray starts"
    assert "--node-ip-address=127.0.0.2" in commands[head] and "--include-dashboard=false" in commands[head]
    assert "0.0.0.0" not in commands[head]
    assert any(":: ray start --block" in c and "--address=127.0.0.2:" in c and "--node-ip-address=127.0.0.3" in c
               for c in commands)
    assert any(":: python -m harness run --ray-address 127.0.0.2:" in c for c in commands)
    assert watch.token_modes == {0o600}, "the token existed only as mode 600 while the job ran"
    assert not (tmp / "jobs" / job_id / "ray_token").exists()
    assert "RAY_AUTH_TOKEN_PATH=" in (tmp / "jobs" / job_id / "head.env").read_text()
    assert "code: image, image " in head_log.read_text()


def _ray_ports(commands: list[str]) -> dict[str, set[int]]:
    """The ports each `ray start` of the job was given, by kind."""
    kinds: dict[str, set[int]] = {}
    for c in commands:
        if ":: ray start" not in c:
            continue
        flags = dict(re.findall(r"--([a-z-]+)=(\d+)\b", c))
        for kind, flag in (("grpc", "port"), ("grpc", "node-manager-port"), ("grpc", "object-manager-port"),
                           ("http", "dashboard-port"), ("http", "dashboard-agent-listen-port"),
                           ("http", "dashboard-agent-grpc-port"), ("http", "metrics-export-port"),
                           ("agent", "runtime-env-agent-port")):
            if flag in flags:
                kinds.setdefault(kind, set()).add(int(flags[flag]))
        kinds.setdefault("grpc", set()).update(range(int(flags["min-worker-port"]), int(flags["max-worker-port"]) + 1))
    return kinds


def test_ray_listens_on_the_node_address_except_where_ray_cannot(pbt_job):
    """Ray 2.60's gRPC servers (GCS, raylet, every core worker and the driver's) bind every interface
    whatever --node-ip-address says, and no option changes it (ray-project/ray#7418): the per-job
    token guards them. Everything else listens on the node's address, and no dashboard or metrics
    port is open at all."""
    *_, calls, _, watch = pbt_job
    ports = _ray_ports(calls.read_text().splitlines())
    listening = {(addr.rpartition(":")[0], int(addr.rpartition(":")[2]), name) for addr, name in watch.listeners}
    assert {name for _, _, name in listening} >= {"gcs_server", "raylet"}, watch.listeners
    ours = {(host, port, name) for host, port, name in listening if any(port in p for p in ports.values())}
    assert not {(h, p, n) for h, p, n in ours if p in ports["http"]}, "a dashboard, agent or metrics port is open"
    everywhere = {(h, p, n) for h, p, n in ours if h in ("*", "0.0.0.0", "[::]")}
    assert all(p in ports["grpc"] for _, p, _ in everywhere), everywhere
    assert all(h in ("127.0.0.2", "127.0.0.3") for h, _, _ in ours - everywhere), ours - everywhere
    assert any(p in ports["agent"] for _, p, _ in ours - everywhere), "the runtime env agent is on the node address"


def test_no_process_of_the_jobs_is_left(pbt_job, cluster):
    tmp, _, job_id, *_ = pbt_job
    assert cluster.run("squeue", "-h").stdout.strip() == ""
    (worker_log,) = (tmp / "logs").glob("hpo-pbt-smoke-worker-*.out")
    _assert_nothing_left(job_id, worker_log.stem.rsplit("-", 1)[1])


def _assert_nothing_left(*job_ids: str) -> None:
    # each job's Ray processes carry its private temp dir /tmp/ray-<jobid>-XXXX in their command line
    pattern = f"/tmp/ray-({'|'.join(job_ids)})-|harness run --ray-address 127.0.0.2"
    deadline = time.monotonic() + 10
    left = ""
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.strip()
        if not left:
            break
        time.sleep(0.5)
    assert left == "", f"left behind:\n{left}"


def _refused_before_ray(tmp: Path, head_log: Path, job_id: str, rc: int) -> str:
    text = head_log.read_text()
    assert rc == 2, text
    assert "START" in text and "FINISH" in text
    assert "starting Ray head" not in text and not (tmp / "jobs" / job_id).exists()
    assert not list((tmp / "logs").glob("*-worker-*")), "no worker may be submitted"
    return text


def test_bad_override_fails_before_ray_starts(cluster, tmp_path):
    rc, head_log, job_id = _submit(cluster, tmp_path, {"LR_LOWER": "2e-4", "LR_UPPER": "1e-5"})
    text = _refused_before_ray(tmp_path, head_log, job_id, rc)
    assert "error: LR_LOWER=0.0002 must be below LR_UPPER=1e-05" in text


def test_an_empty_cache_stops_the_head_job_before_any_ray_process(cluster, tmp_path):
    rc, head_log, job_id = _submit(cluster, tmp_path, {})
    text = _refused_before_ray(tmp_path, head_log, job_id, rc)
    cache = tmp_path / "results" / ".cache"
    # the budget changes nothing in the cache, so the line to run does not carry it
    assert f"error: the cache {cache} has no tiny-bloom model for seed 42; fill it where there is network: " \
           f"make prepare PRESET=smoke CACHE_DIR={cache}\n" in text


def test_a_job_without_an_image_refuses_unless_the_venv_is_chosen(cluster, tmp_path):
    rc, head_log, job_id = _submit(cluster, tmp_path, {"HARNESS_SIF": ""})
    text = _refused_before_ray(tmp_path, head_log, job_id, rc)
    assert "no container image: HARNESS_SIF is not set" in text and "HARNESS_SIF=none" in text


def test_scancel_mid_run_leaves_a_finish_line_and_no_process(cluster, prepared, tmp_path):
    job_id, head_log = _submit_nowait(cluster, tmp_path, prepared)
    logs = head_log.parent
    deadline = time.monotonic() + 300
    while "iterations  " not in (head_log.read_text() if head_log.is_file() else ""):  # a trial has reported
        assert time.monotonic() < deadline and cluster.run("squeue", "-h", "-j", job_id).stdout.strip(), \
            head_log.read_text()[-3000:] if head_log.is_file() else "no head log"
        time.sleep(1)
    cancelled = time.monotonic()
    assert cluster.run("scancel", job_id).returncode == 0
    while cluster.run("squeue", "-h").stdout.strip():
        assert time.monotonic() - cancelled < 60, cluster.run("squeue").stdout
        time.sleep(0.5)
    text = head_log.read_text()
    assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M), text[-3000:]
    workers = [p.stem.rsplit("-", 1)[1] for p in logs.glob("hpo-head-worker-*.out")]
    _assert_nothing_left(job_id, *workers)


def _submit_nowait(cluster, tmp: Path, extra_env: dict[str, str], *sbatch_args: str,
                   script: Path = HEAD) -> tuple[str, Path]:
    logs = tmp / "logs"
    done = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--job-name=hpo-head",
                           f"--output={logs}/%x-%j.out", *sbatch_args, str(script)],
                          capture_output=True, text=True, env=_env(cluster, tmp, extra_env), cwd=tmp, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    return job_id, logs / f"hpo-head-{job_id}.out"


def _results_in(results: Path, *, node: str = "") -> int:
    total = 0
    for folder in results.glob("*/events.jsonl"):
        total += sum(e["event"] == "trial_result" and (not node or e["row"].get("node_ip") == node)
                     for e in events.read(folder))
    return total


def _wait_until(cluster, job_id: str, head_log: Path, condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        running = cluster.run("squeue", "-h", "-j", job_id).stdout.strip()
        assert running and time.monotonic() < deadline, \
            f"{what}: " + (head_log.read_text()[-3000:] if head_log.is_file() else "no head log")
        time.sleep(1)


def _wait_for_empty_queue(cluster, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while cluster.run("squeue", "-h").stdout.strip():
        assert time.monotonic() < deadline, cluster.run("squeue").stdout
        time.sleep(1)


def test_manual_in_the_head_job_alone_stops_on_usr1_resumes_under_one_mlflow_parent_and_never_logs_the_password(
        cluster, prepared, tmp_path):
    """The manual grid through the head job (no Ray, no worker jobs, from .venv) against a real
    `mlflow server` whose URI holds a password. SLURM's --signal=B:USR1@120 reaches the head job,
    which forwards it to the driver: the grid stops after the iteration in flight (exit 75, its
    checkpoint kept); resubmitting with RESUME= skips the finished combination and finishes under
    the same MLflow runs. No log line anywhere shows the password. (Ray Tune's USR1 and resume:
    tests/test_faults.py.)"""
    (tmp_path / "results" / "server").mkdir(parents=True)
    with serve_mlflow(tmp_path / "results" / "server" / "mlflow.db") as port:
        uri = f"http://alice:s3cret-pw@127.0.0.1:{port}"
        # two combinations of ten short iterations: USR1 lands while one is in flight
        small = {"STRATEGY": "manual", "MLFLOW_TRACKING_URI": uri, **prepared,
                 "HARNESS_ARGS": "--set budget.trial_iterations=20 --set train.iterations=10 --bs-choices 1 --wd-choices 0.0"}
        job_id, head_log = _submit_nowait(cluster, tmp_path, small)
        _wait_until(cluster, job_id, head_log, lambda: _results_in(tmp_path / "results") >= 3, "no results")
        assert cluster.run("scancel", "--signal=USR1", "--batch", job_id).returncode == 0
        _wait_for_empty_queue(cluster)
        text = head_log.read_text()
        assert "SIGUSR1: the time limit is near" in text and "head job done (exit 75)" in text, text[-3000:]
        assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M)
        assert "runs sequentially in this job: no Ray, no worker jobs" in text and "code: the virtual environment" in text
        assert "ray start" not in text and not (tmp_path / "jobs" / job_id).exists()
        assert f"MLflow: http://***@127.0.0.1:{port}" in text
        (run_dir,) = [p.parent for p in (tmp_path / "results").glob("*/events.jsonl")]
        stopped = RunDir(run_dir).record()
        (in_flight,) = [t for t in stopped.trials if t.status == "RUNNING"]
        assert stopped.stopped and (RunDir(run_dir).manual_checkpoints / in_flight.trial_id).is_dir()

        rc, log, resumed_id = _submit(cluster, tmp_path, {**small, "RESUME": str(run_dir)}, name="hpo-manual-smoke")
        assert rc == 0, log.read_text()[-4000:]
        runs = runs_of("hpo-smoke", f"http://127.0.0.1:{port}")
    record = RunDir(run_dir).record()
    assert not record.stopped and len(record.resumes) == 1 and record.resumes[0]["redone_iterations"] == 0
    assert [[r.iteration for r in t.history] for t in record.trials] == [list(range(1, 11))] * 2
    trained = [(e["trial_id"], e["row"]["iteration"]) for e in events.read(RunDir(run_dir).events_file)
               if e["event"] == "trial_result"]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 20, \
        "no iteration trained twice: finished combinations are skipped, the stopped one goes on from its checkpoint"
    out = _collect(log)
    assert len([line for line in out.splitlines() if re.match(r"\| c0[12] \|", line)]) == 2
    assert re.search(r"^\| job start \| .* \|$", out, re.M) and "| total job time |" in out
    assert not list((tmp_path / "logs").glob("*-worker-*"))
    for where in [head_log, log, run_dir / "harness.log", *run_dir.rglob("*.log")]:
        assert "s3cret-pw" not in where.read_text(errors="replace"), where
    assert len(runs) == 3 and sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 1
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags.get("code") for r in runs if "mlflow.parentRunId" not in r.data.tags} == {"venv"}
    _assert_nothing_left(job_id, resumed_id)


def test_a_worker_job_cancelled_mid_run_costs_only_its_in_flight_iterations(cluster, prepared, tmp_path):
    job_id, head_log = _submit_nowait(cluster, tmp_path, prepared)
    _wait_until(cluster, job_id, head_log, lambda: _results_in(tmp_path / "results", node="127.0.0.3") >= 1,
                "no result from the worker node")
    (worker_log,) = (tmp_path / "logs").glob("hpo-head-worker-*.out")
    worker_id = worker_log.stem.rsplit("-", 1)[1]
    assert cluster.run("scancel", worker_id).returncode == 0
    _wait_for_empty_queue(cluster, timeout=600)
    text = head_log.read_text()
    assert "head job done (exit 0)" in text, text[-4000:]
    (run_dir,) = [p.parent for p in (tmp_path / "results").glob("*/events.jsonl")]
    record = RunDir(run_dir).record()
    assert all(t.status == "TERMINATED" and [r.iteration for r in t.history] == [1, 2, 3] for t in record.trials)
    retried = [t for t in record.trials if t.retries]
    assert retried, "the worker's trials were restarted"
    assert all(row.node_ip == "127.0.0.2" for t in retried for row in t.history[-1:])
    print(f"retried after losing the worker: {[(t.name, t.retries) for t in retried]}")
    _assert_nothing_left(job_id, worker_id)


# One allocation (make submit-<strategy> LAUNCH=allocation): no job submits another; the worker
# node joins through an srun step of the same job.

@pytest.fixture(scope="module")
def allocation_job(cluster, prepared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allocation")
    rc, log, job_id = _submit(cluster, tmp, {**prepared, "NUM_WORKERS": "3"}, *TWO_TASKS, script=ALLOCATION)
    assert rc == 0, log.read_text()[-6000:] if log.is_file() else "(no log)"
    return tmp, log, job_id


def _steps_of(job_id: str, tmp: Path) -> list[Path]:
    return sorted((tmp / "logs").glob(f"*-worker-{job_id}.*.out"))


def test_one_allocation_runs_both_ray_nodes_from_srun_steps_and_leaves_nothing(allocation_job, cluster):
    tmp, log, job_id = allocation_job
    text = log.read_text()
    assert re.search(rf"^===== JOB {job_id} START : .* =====$", text, re.M)
    assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M)
    assert "NUM_WORKERS=3, but this allocation has 2 tasks: 1 worker node(s) join" in text
    assert "worker nodes: 1 srun step(s) in this allocation" in text and "worker jobs:" not in text
    (step_log,) = _steps_of(job_id, tmp)
    step = step_log.read_text()
    assert "as 127.0.0.3" in step and "shutdown.txt found (head exit code 0)" in step and "worker done (exit 0)" in step
    jobs = {line.split()[0].split("=")[1] for line in (cluster.root / "log" / "jobcomp.txt").read_text().splitlines()
            if f"WorkDir={tmp} " in line}
    assert jobs == {job_id}, "no job was submitted from inside the allocation"
    (run_dir,) = [p for p in (tmp / "results").iterdir() if (p / "run_record.json").is_file()]
    record = RunDir(run_dir).record()
    assert all(t.status == "TERMINATED" and t.iterations == 3 for t in record.trials)
    assert {row.node_ip for t in record.trials for row in t.history} == {"127.0.0.2", "127.0.0.3"}
    out = _collect(log)
    assert len([line for line in out.splitlines() if re.match(r"\| c\d\d \|", line)]) == 4
    assert "| total job time |" in out
    assert cluster.run("squeue", "-h").stdout.strip() == ""
    _assert_nothing_left(job_id)


def test_one_allocation_loses_a_node_then_stops_on_usr1_and_resumes(cluster, prepared, tmp_path):
    """The worker node's step is cancelled mid-run (a lost node): its trials go on on the head node.
    Then USR1 (what --signal=B:USR1@120 sends before the time limit): exit 75 with a FINISH line;
    RESUME= in a new allocation finishes the same run."""
    budget = {**prepared, "HARNESS_ARGS": "--set budget.trial_iterations=24"}  # a population of 8
    job_id, log = _submit_nowait(cluster, tmp_path, budget, *TWO_TASKS, script=ALLOCATION)
    results = tmp_path / "results"
    _wait_until(cluster, job_id, log, lambda: _results_in(results, node="127.0.0.3") >= 1, "no result from the worker")
    assert cluster.run("scancel", f"{job_id}.0").returncode == 0  # the worker node's srun step
    lost = _results_in(results)
    _wait_until(cluster, job_id, log, lambda: _results_in(results, node="127.0.0.2") >= lost + 2,
                "nothing reported after the worker node was lost")
    assert cluster.run("scancel", "--signal=USR1", "--batch", job_id).returncode == 0
    _wait_for_empty_queue(cluster)
    text = log.read_text()
    assert "SIGUSR1: the time limit is near" in text and "head job done (exit 75)" in text, text[-4000:]
    assert re.search(rf"^===== JOB {job_id} FINISH : .* =====$", text, re.M)
    _assert_nothing_left(job_id)
    (run_dir,) = [p.parent for p in results.glob("*/events.jsonl")]
    assert RunDir(run_dir).record().stopped

    rc, log2, resumed = _submit(cluster, tmp_path, {**budget, "RESUME": str(run_dir)}, *TWO_TASKS, script=ALLOCATION)
    assert rc == 0, log2.read_text()[-4000:]
    record = RunDir(run_dir).record()
    assert not record.stopped and len(record.resumes) == 1
    assert len(record.trials) == 8
    assert all(t.status == "TERMINATED" and [r.iteration for r in t.history] == [1, 2, 3] for t in record.trials)
    assert any(t.retries for t in record.trials), "the lost node's trials were restarted"
    _assert_nothing_left(job_id, resumed)
