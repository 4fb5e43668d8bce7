"""A tracking server that is not there is reported before anything starts, in one line, with the
flag that runs without it; MLflow's own retries (minutes) are never reached."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, uri: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--strategy", "manual", "--preset", "smoke",
                           "--results-dir", str(tmp_path / "results"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,  # a hang fails here
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    return done, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_tracking_server_is_one_line_and_exit_2_before_anything_starts(tmp_path):
    port = _closed_port()
    done, _ = _run(tmp_path, f"http://bob:pw@127.0.0.1:{port}")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI=http://***@127.0.0.1:{port} does not answer (")
    assert "--no-mlflow" in line and "pw" not in line
    assert not (tmp_path / "results").exists(), "nothing was started or written"


def test_a_server_that_accepts_but_never_answers_is_reported_after_the_probe_timeout(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(server.accept()[0])  # accepted, never answered
                except OSError:
                    pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            done, elapsed = _run(tmp_path, f"http://127.0.0.1:{server.getsockname()[1]}")
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()
    assert done.returncode == 2, done.stderr
    assert "did not answer /health within 4 s" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    print(f"detected in {elapsed:.1f} s")


@pytest.mark.integration
def test_no_mlflow_runs_without_the_server_and_keeps_the_record(tmp_path):
    done, _ = _run(tmp_path, f"http://127.0.0.1:{_closed_port()}", "--no-mlflow", "--set", "train.iterations=1",
                   "--set", "budget.trial_iterations=2", "--bs-choices", "1", "--wd-choices", "0.0")
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = (tmp_path / "results").glob("manual-*/run_record.json")
    assert "MLflow:" not in done.stdout and not (tmp_path / "results" / "mlflow.db").exists()
    assert record.is_file()


@pytest.mark.integration
def test_a_tracking_server_stopped_for_10_s_mid_run_loses_nothing_and_duplicates_nothing(tmp_path):
    """Down for two of the tracker's retry intervals (RETRY_S = 5 s), while the run trains on."""
    from conftest import serve_mlflow
    from mlflow.tracking import MlflowClient

    from harness.cluster.reachability import tracking_problem
    from harness.contract import events
    from harness.reporting.tracking import runs_of

    store = tmp_path / "server.db"
    results = tmp_path / "results"
    with serve_mlflow(store) as port:
        uri = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--strategy", "pbt", "--preset", "smoke",
                                 "--set", "budget.trial_iterations=12", "--set", "budget.slots=2",
                                 "--results-dir", str(results)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        deadline = time.monotonic() + 300
        while True:
            found = list(results.glob("*/events.jsonl"))
            if found and sum(e["event"] == "trial_result" for e in events.read(found[0])) >= 2:
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
    time.sleep(10)  # the server is down; the run trains on
    with serve_mlflow(store, port):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        run_dir = found[0].parent
        sync = subprocess.run([sys.executable, "-m", "harness", "sync", str(run_dir)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                           # a server just started on a loaded machine: >4 s seen
                                                           "HARNESS_MLFLOW_PROBE_S": "30"})
        assert sync.returncode == 0, sync.stderr
        # the probe answers for a live server, also when its URI holds credentials
        assert tracking_problem(f"http://alice:s3cret%40pw@127.0.0.1:{port}") == ""
        assert tracking_problem(f"http://127.0.0.1:{port}/") == ""
        runs = runs_of("hpo-smoke", uri)
        client = MlflowClient(tracking_uri=uri)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == 5 and len(children) == 4
        assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
        for child in children:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "eval_loss"))
            assert steps == [1, 2, 3], (child.info.run_name, steps)
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        assert "best_eval_loss" in parent.data.metrics
    assert "stopped answering" in out


@pytest.mark.integration
def test_a_server_that_dies_between_the_preflight_and_the_trackers_set_up_is_spooled_then_synced(tmp_path):
    """The window between the pre-flight's /health and the first MLflow call: the run goes on, its
    MLflow calls (the parent run's creation first) are spooled, and `harness sync` makes them."""
    import http.server

    from conftest import serve_mlflow
    from mlflow.tracking import MlflowClient

    from harness.contract.rundir import RunDir
    from harness.reporting.tracking import runs_of

    class HealthOnce(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()
            self.wfile.write(b"OK")
            threading.Thread(target=fake.shutdown, daemon=True).start()  # then the "server" is gone

        def log_message(self, *args: object) -> None:
            return None

    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthOnce)
    port = fake.server_address[1]
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    try:
        done, _ = _run(tmp_path, f"http://127.0.0.1:{port}", "--set", "train.iterations=1",
                       "--set", "budget.trial_iterations=2", "--bs-choices", "1", "--wd-choices", "0.0")
    finally:
        fake.shutdown()
        fake.server_close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "stopped answering" in done.stderr
    (run_dir,) = (tmp_path / "results").glob("manual-*/")
    assert RunDir(run_dir).record().mlflow_run_id == ""  # not made yet: its creation waits in the spool
    with serve_mlflow(tmp_path / "server.db", port):
        uri = f"http://127.0.0.1:{port}"
        sync = subprocess.run([sys.executable, "-m", "harness", "sync", str(run_dir)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                           # a server just started on a loaded machine: >4 s seen
                                                           "HARNESS_MLFLOW_PROBE_S": "30"})
        assert sync.returncode == 0, sync.stderr
        runs = runs_of("hpo-smoke", uri)
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in runs)
        assert parent.data.tags["run_dir"] == str(run_dir.resolve()) and "best_eval_loss" in parent.data.metrics
        assert RunDir(run_dir).record().mlflow_run_id == parent.info.run_id
        for child in children:
            assert [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(child.info.run_id, "iteration")] == [1]
