"""``harness sync``: send a run's MLflow events that the tracking server did not take while it was
down (kept in the run folder's spool), in order and without duplicates."""

from __future__ import annotations

from pathlib import Path

from harness.cluster.reachability import tracking_problem
from harness.config import ConfigError, ExperimentConfig
from harness.contract.rundir import RunDir


def sync(path: str | Path) -> tuple[RunDir, int]:
    """(the run folder, events sent); ConfigError when the server does not answer (nothing lost)."""
    from harness.reporting.tracking import Tracker, tracking_uri  # mlflow: 1.5 s to import, only here

    run_dir = RunDir.existing(path, what="sync")
    spool = run_dir.spool_file
    waiting = [line for line in spool.read_text().splitlines() if line.strip()] if spool.is_file() else []
    if not waiting:
        return run_dir, 0
    cfg = ExperimentConfig.from_dict(run_dir.config_data())
    problem = tracking_problem(tracking_uri(cfg.results_dir))
    if problem:
        raise ConfigError(f"{problem}; {len(waiting)} event(s) stay in {spool}: run sync again when it answers")
    tracker = Tracker(cfg, run_dir, tags={}, events=run_dir.event_log(), previous=run_dir.replay())
    if not tracker.flush(force=True):
        raise ConfigError(f"MLflow stopped answering during the sync; {tracker.pending()} event(s) stay in {spool}")
    if run_dir.record_file.is_file():  # a parent or child made only now is in the event log: the record says so too
        run_dir.save_record(run_dir.replay())
    return run_dir, len(waiting)
