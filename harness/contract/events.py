"""The run's append-only event log, ``events.jsonl``: the record a killed driver cannot lose.

Every trial event (started, result, retried, ended) and every run event (started, the MLflow run
ids, resumed, stopped, finished) is one JSON line, written and flushed to the operating system
before the next event is handled, so a driver killed with SIGKILL loses at most the event in
flight. ``run_record.json`` and the tables are derived from it (:func:`replay`); ``--resume``
reads it to know what is done, which MLflow runs to continue, and how much time the fault cost.

The sink opens the file for each event: the sinks travel inside Ray Tune's pickled experiment
state, which an open file cannot.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from harness.contract.record import HISTORY_KEYS, RunRecord, TrialRecord
from harness.trial.segment import HPARAMS

EVENTS_FILE = "events.jsonl"


class EventLog:
    """A sink (trial_started / trial_result / trial_ended) that appends every event to the log."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENTS_FILE

    def write(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, "at": time.time(), **data}, default=str, allow_nan=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def trial_started(self, trial_id: str, name: str, config: dict[str, Any]) -> None:
        self.write("trial_started", trial_id=trial_id, name=name,
                   config={k: config[k] for k in HPARAMS if k in config})

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.write("trial_result", trial_id=trial_id, row={k: result.get(k) for k in HISTORY_KEYS})

    def trial_retried(self, trial_id: str, error: str) -> None:
        self.write("trial_retried", trial_id=trial_id, error=error[-2000:])

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        self.write("trial_ended", trial_id=trial_id, status=status, error=error[-5000:])

    def mlflow_child(self, trial_id: str, run_id: str) -> None:
        self.write("mlflow_child", trial_id=trial_id, run_id=run_id)


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events so far; a last line cut off by a kill is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the event in flight when the driver died
    return events


def replay(run_dir: str | Path) -> RunRecord:
    """The run record the events describe.

    After a resume, Ray Tune (or the manual grid) continues each trial from the last checkpoint it
    had saved, so a trial's first report after it can repeat iterations the log already holds
    (PBT exploits included): the new report wins, and the earlier rows from that iteration on count
    as redone work (``resumes``: how many iterations, how many trial-seconds, and how long the run
    was down). Within one driver's lifetime nothing is dropped: an asynchronous PBT exploit that
    goes back to a donor's earlier iteration is the lineage analysis's business.
    """
    record: RunRecord | None = None
    trials: dict[str, TrialRecord] = {}
    first_since_resume: set[str] = set()
    last_at = 0.0
    for e in read(run_dir):
        kind = e["event"]
        if kind == "run_started":
            record = RunRecord(strategy=e["strategy"], preset=e["preset"], seed=int(e["seed"]), config=e["config"],
                               started_at=float(e["at"]), budget_trial_iterations=int(e["budget"]))
        elif record is None:
            raise ValueError(f"{Path(run_dir) / EVENTS_FILE} does not begin with run_started")
        elif kind == "mlflow_parent":
            record.mlflow_run_id = e["run_id"]
        elif kind == "trial_started":
            rec = trials.get(e["trial_id"])
            if rec is None:
                rec = trials[e["trial_id"]] = TrialRecord(trial_id=e["trial_id"], name=e["name"],
                                                          initial_config=e["config"], started_at=float(e["at"]))
                record.trials.append(rec)
            rec.status = "RUNNING"
        elif kind == "trial_result":
            rec = trials[e["trial_id"]]
            row = {**e["row"], "received_at": float(e["at"])}
            if rec.trial_id in first_since_resume:
                first_since_resume.discard(rec.trial_id)
                redone = [r for r in rec.history if (r.get("iteration") or 0) >= (row.get("iteration") or 0)]
                record.resumes[-1]["redone_iterations"] += len(redone)
                record.resumes[-1]["redone_s"] += sum(r.get("time_this_iter_s") or 0.0 for r in redone)
                rec.history = [r for r in rec.history if r not in redone]
            rec.history.append(row)
        elif kind == "trial_retried":
            rec = trials[e["trial_id"]]
            rec.retries += 1
            rec.error = e.get("error", "")
        elif kind == "trial_ended":
            rec = trials[e["trial_id"]]
            rec.status, rec.ended_at, rec.error = e["status"], float(e["at"]), e.get("error", "")
        elif kind == "resumed":
            first_since_resume = set(trials)
            record.resumes.append({"at": float(e["at"]), "down_s": float(e["at"]) - last_at,
                                   "redone_iterations": 0, "redone_s": 0.0})
        elif kind == "run_stopped":
            record.stopped = e.get("reason", "stopped")
        elif kind == "run_finished":
            record.finished_at, record.slots = float(e["at"]), int(e.get("slots") or record.slots)
            record.stopped = e.get("stopped", "")
        last_at = float(e["at"])
    if record is None:
        raise ValueError(f"{Path(run_dir) / EVENTS_FILE} holds no run")
    if not record.finished_at:
        record.finished_at = last_at
    return record


def finished(run_dir: str | Path) -> bool:
    """Did the run end with every trial done (nothing left to resume)?"""
    events = read(run_dir)
    if not events or events[-1]["event"] != "run_finished" or events[-1].get("stopped"):
        return False
    record = replay(run_dir)
    return all(t.status in ("TERMINATED", "ERROR") for t in record.trials)


def mlflow_runs(run_dir: str | Path) -> dict[str, Any]:
    """The MLflow parent run and the child run of every trial, as logged: what a resume continues."""
    parent, children = "", {}
    for e in read(run_dir):
        if e["event"] == "mlflow_parent":
            parent = e["run_id"]
        elif e["event"] == "mlflow_child":
            children[e["trial_id"]] = e["run_id"]
    return {"parent": parent, "children": children}


def down_s(record: RunRecord) -> float:
    """Seconds between the last event before each fault and the resume: time the run stood still."""
    return sum(r["down_s"] for r in record.resumes if not math.isnan(r["down_s"]))
