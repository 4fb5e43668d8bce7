"""The run's append-only event log, ``events.jsonl``: the record a killed driver cannot lose.

Every trial event (started, result, retried, ended) and every run event (started, the MLflow run
ids, resumed, finished) is one JSON line, written and flushed to the operating system before the
next event is handled, so a driver killed with SIGKILL loses at most the event in flight.
``run_record.json`` and the tables are derived from it (:func:`replay`); ``--resume`` reads it
to know what is done, which MLflow runs to continue, and how much time the fault cost.

The sink opens the file for each event: the sinks travel inside Ray Tune's pickled experiment
state, which an open file cannot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from harness.contract.iteration import HParams, Iteration
from harness.contract.record import ENDED, RunRecord
from harness.contract.sink import Sink


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to the operating system. A line left cut off by a kill is
    closed first, so it spoils only itself, never the next driver's first event."""
    with open(path, "a+b") as fh:
        torn = False
        if fh.seek(0, os.SEEK_END):
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((("\n" if torn else "") + line + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


class EventLog(Sink):
    """A sink that appends every event to the log; :meth:`write` returns the event it wrote, so
    a driver can fold it into a record it holds without reading the log again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, event: str, **data: Any) -> dict[str, Any]:
        entry = {"event": event, "at": time.time(), **data}
        append_line(self.path, json.dumps(entry, default=str, allow_nan=True))
        return entry

    def trial_started(self, trial_id: str, name: str, hparams: HParams) -> None:
        self.write("trial_started", trial_id=trial_id, name=name, config=hparams.as_dict())

    def trial_result(self, trial_id: str, row: Iteration) -> None:
        self.write("trial_result", trial_id=trial_id, row={k: v for k, v in row.to_dict().items() if k != "received_at"})

    def trial_retried(self, trial_id: str, error: str) -> None:
        self.write("trial_retried", trial_id=trial_id, error=error[-2000:])

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        self.write("trial_ended", trial_id=trial_id, status=str(status), error=error[-5000:])

    def mlflow_child(self, trial_id: str, run_id: str) -> None:
        self.write("mlflow_child", trial_id=trial_id, run_id=run_id)


def read(path: str | Path) -> list[dict[str, Any]]:
    """The events so far; a last line cut off by a kill is skipped."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the event in flight when the driver died
    return events


def replay(path: str | Path) -> RunRecord:
    """The run record the events in ``path`` describe (see :meth:`RunRecord.apply`)."""
    events = read(path)
    if not events or events[0]["event"] != "run_started":
        raise ValueError(f"{path} does not begin with run_started")
    record = RunRecord.started(events[0])
    for event in events[1:]:
        record.apply(event)
    return record


def complete(record: RunRecord) -> bool:
    """Did the run end with every trial done (nothing left to resume)?"""
    return bool(record.finished_at) and not record.stopped and all(t.status in ENDED for t in record.trials)
