"""Faults injected for real: a driver killed with SIGKILL and resumed, SIGUSR1 before a time limit,
a trial that raises or SIGKILLs its own process. Nothing lost, nothing duplicated, no process
left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.contract import events
from harness.contract.rundir import RunDir
from harness.reporting.tracking import runs_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _start(results: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "--preset", "smoke", "--results-dir", str(results),
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _run_dir(results: Path) -> Path:
    deadline = time.monotonic() + 120
    while True:
        found = [p for p in results.glob("*/events.jsonl")]
        if found:
            return found[0].parent
        assert time.monotonic() < deadline, "no run folder appeared"
        time.sleep(0.2)


def _results(run_dir: Path) -> int:
    return sum(e["event"] == "trial_result" for e in events.read(RunDir(run_dir).events_file))


def _wait_for_results(proc: subprocess.Popen, run_dir: Path, n: int) -> None:
    deadline = time.monotonic() + 300
    while _results(run_dir) < n:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _kill_and_check_nothing_is_left(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> float:
    """SIGKILL (or SIGTERM: scancel) the driver; every process it had started must be gone within 10 s
    (returns how long it took)."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert tree, "the driver had started Ray"
    proc.send_signal(sig)
    proc.wait()
    if sig == signal.SIGTERM:  # mid-run, SIGTERM means "end now": at once, one line, exit 143 (no SIGABRT, no traceback)
        out = proc.stdout.read()
        assert proc.returncode == 143 and "SIGTERM: the driver ends now" in out and "Traceback" not in out, out[-2000:]
    killed = time.monotonic()
    while time.monotonic() - killed < 10:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return time.monotonic() - killed
        time.sleep(0.2)
    raise AssertionError(f"left behind 10 s after SIGKILL: {[(p.pid, p.name()) for p in alive]}")


def _resume(run_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "run", "--resume", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_pbt_killed_with_sigkill_then_sigterm_and_resumed_ends_complete_with_one_mlflow_run_per_trial(tmp_path):
    results = tmp_path / "results"
    proc = _start(results, "--strategy", "pbt", "--set", "budget.trial_iterations=12",  # population 4 x 3
                  "--set", "budget.slots=2")
    run_dir = _run_dir(results)
    _wait_for_results(proc, run_dir, 3)  # after the first checkpoints
    cleanup_s = [_kill_and_check_nothing_is_left(proc)]
    assert not (run_dir / "run_record.json").exists()

    # resume, and end the resumed driver with SIGTERM (what scancel sends)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--resume", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_results(proc, run_dir, _results(run_dir) + 3)
    cleanup_s.append(_kill_and_check_nothing_is_left(proc, signal.SIGTERM))

    done = _resume(run_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = RunDir(run_dir).record()
    assert len(record.trials) == 4
    for t in record.trials:
        assert t.status == "TERMINATED", (t.name, t.status, t.error[-500:])
        iterations = [row.iteration for row in t.history]
        assert iterations[-1] == 3, (t.name, iterations)
        # an iteration trained twice because of a kill is recorded once; only a PBT exploit can go back to an
        # iteration (Ray restores each trial from its own last checkpoint, not the scheduler's barrier)
        trained = [row.iteration for row in t.history if not row.exploited_from]
        assert len(trained) == len(set(trained)), (t.name, iterations)
    assert len(record.resumes) == 2
    redone = sum(r["redone_iterations"] for r in record.resumes)
    runs = runs_of("hpo-smoke", f"sqlite:///{results / 'mlflow.db'}")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["trial_id"] for c in children} == {t.trial_id for t in record.trials}
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert parents[0].data.tags["resumes"] == "2"
    table = (run_dir / "tables" / "results.md").read_text()
    assert table.count("| resumed |") == 2
    print(f"cleanup after SIGKILL: {cleanup_s} s; iterations redone: {redone}; "
          f"down: {[round(r['down_s'], 1) for r in record.resumes]} s")


def test_a_trial_process_killed_by_a_fault_is_retried_from_its_checkpoint(tmp_path):
    results = tmp_path / "results"
    env = {"HARNESS_FAULT": "c02:2:kill", "HARNESS_FAULT_DIR": str(tmp_path)}
    proc = _start(results, "--strategy", "fifo", "--set", "budget.trial_iterations=6", "--bs-choices", "2",
                  "--wd-choices", "0.0", "--set", "budget.slots=2", env=env)  # two trials, two slots
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    record = RunDir(_run_dir(results)).record()
    (c02,) = [t for t in record.trials if t.trial_id.endswith("00001")]
    assert c02.retries == 1 and c02.status == "TERMINATED"
    assert [row.iteration for row in c02.history] == [1, 2, 3]
    assert all(t.status == "TERMINATED" and t.iterations == 3 for t in record.trials)
    assert "1 restarted from a checkpoint; 0 errored" in (_run_dir(results) / "tables" / "results.md").read_text()


def test_manual_retries_a_raising_combination_and_errors_after_max_failures(tmp_path):
    small = ["--strategy", "manual", "--set", "train.iterations=2", "--set", "budget.trial_iterations=4",
             "--bs-choices", "1", "--wd-choices", "0.0"]
    env = {"HARNESS_FAULT": "c01:2:raise", "HARNESS_FAULT_DIR": str(tmp_path / "once")}
    (tmp_path / "once").mkdir()
    proc = _start(tmp_path / "retried", *small, env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    record = RunDir(_run_dir(tmp_path / "retried")).record()
    c01 = record.trials[0]
    assert (c01.retries, c01.status, [r.iteration for r in c01.history]) == (1, "TERMINATED", [1, 2])

    (tmp_path / "never").mkdir()
    env = {"HARNESS_FAULT": "c01:2:raise", "HARNESS_FAULT_DIR": str(tmp_path / "never")}
    proc = _start(tmp_path / "errored", *small, "--set", "tune.max_failures=0", env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 trial(s) did not finish" in out
    run_dir = _run_dir(tmp_path / "errored")
    record = RunDir(run_dir).record()
    assert [t.status for t in record.trials] == ["ERROR", "TERMINATED"]
    assert "InjectedFault" in record.trials[0].error
    assert "0 restarted from a checkpoint; 1 errored (c01)" in (run_dir / "tables" / "results.md").read_text()
    assert "1 trial(s) did not finish: c01;" in out


def test_sigusr1_stops_ray_tune_after_the_iterations_in_flight_and_resume_finishes_under_one_mlflow_parent(tmp_path):
    """What SLURM's --signal=B:USR1@120 does before a time limit, on a Ray strategy: exit 75 with
    every checkpoint saved, then --resume continues the same trials and MLflow runs. (The manual
    grid's USR1 goes through the SLURM head job in tests/test_slurm.py.)"""
    results = tmp_path / "results"
    proc = _start(results, "--strategy", "pbt", "--set", "budget.trial_iterations=12", "--set", "budget.slots=2")
    run_dir = _run_dir(results)
    _wait_for_results(proc, run_dir, 3)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    assert f"--resume {run_dir}" in out
    stopped = RunDir(run_dir).record()
    assert stopped.stopped and any(t.status != "TERMINATED" for t in stopped.trials)
    assert "stopped" in (run_dir / "tables" / "results.md").read_text()

    done = _resume(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    record = RunDir(run_dir).record()
    assert not record.stopped and len(record.resumes) == 1
    assert all(t.status == "TERMINATED" and t.iterations == 3 for t in record.trials), \
        [(t.label, t.status, [r.iteration for r in t.history]) for t in record.trials]
    runs = runs_of("hpo-smoke", f"sqlite:///{results / 'mlflow.db'}")
    assert sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 1 and len(runs) == 5
    assert all(r.info.status == "FINISHED" for r in runs)


def test_resume_refuses_a_folder_that_is_no_run_and_brings_a_complete_run_up_to_date(tmp_path):
    done = _resume(tmp_path)
    assert done.returncode == 2 and "is not a run folder of this harness" in done.stderr
    from harness.config import resolve

    cfg = resolve("smoke", env={}, overrides={"strategy": "manual", "results_dir": str(tmp_path / "results")})
    # a run whose every trial ended, and whose driver was killed before it wrote its record and tables
    run_dir = RunDir.create(tmp_path / "results", "manual-smoke-done", config=cfg.to_json(),
                            first_event=dict(strategy="manual", preset="smoke", seed=cfg.seed, config=cfg.to_dict(),
                                             budget=36, tracking=False))
    log = run_dir.event_log()
    log.write("trial_started", trial_id="manual_00000", name="a", config={})
    log.write("trial_ended", trial_id="manual_00000", status="TERMINATED")
    log.write("run_finished", slots=1, stopped="")
    done = _resume(run_dir.path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is complete: its record, tables and MLflow runs are brought up to date" in done.stderr
    assert run_dir.record().resumes == [] and (run_dir.tables_dir / "results.md").is_file()


def test_a_stop_in_the_first_second_of_a_start_or_a_resume_exits_75_and_the_folder_resumes(tmp_path):
    """SIGUSR1 (a time limit) or SIGTERM (scancel) in the first moments, before the harness has even
    imported its libraries: exit 75 with the line that resumes, nothing started, and --resume takes
    the folder, Ray Tune state or not."""
    results = tmp_path / "results"
    proc = _start(results, "--strategy", "pbt", "--set", "budget.trial_iterations=12", "--set", "budget.slots=2")
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    (run_dir,) = results.glob("pbt-smoke-*")
    assert f"--resume {run_dir}" in out and "Traceback" not in out
    kinds = [e["event"] for e in events.read(RunDir(run_dir).events_file)]
    assert kinds == ["run_started", "run_finished"] and not (run_dir / "ray").exists()  # nothing was started

    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--resume", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "SIGTERM during start-up" in out, out[-3000:]

    done = _resume(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    record = RunDir(run_dir).record()
    assert len(record.trials) == 4 and all(t.iterations == 3 for t in record.trials) and len(record.resumes) == 2
    runs = runs_of("hpo-smoke", f"sqlite:///{results / 'mlflow.db'}")
    assert sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 1 and len(runs) == 5
    assert all(r.info.status == "FINISHED" for r in runs)
