"""The run record: what happened to every trial, folded from the run's events as they happened.

Every trial event reaches the driver (through a Ray Tune callback, or the manual grid's loop) and
is appended to the run's event log (:mod:`harness.contract.events`); the record is that log
folded event by event (:meth:`RunRecord.apply`), saved as ``run_record.json``, and is the only
input of the tables and of later analysis: nothing is scraped from the console.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from harness.contract.iteration import HPARAMS, Iteration


class Status(str, Enum):
    """A trial's state, in Ray Tune's words (the manual grid uses the same)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


#: A trial in one of these states has nothing left to do.
ENDED = (Status.TERMINATED, Status.ERROR)


def short_id(trial_id: str) -> str:
    """``c01``, ``c02``...: the trial's one name everywhere a person reads it (console, tables,
    MLflow, plots). Ray's ``trainable_3e890_00003`` and the grid's ``manual_00003`` both end in
    their 0-based index; Ray's id stays in the ``ray_trial_id`` tag and the record."""
    tail = trial_id.rsplit("_", 1)[-1]
    return f"c{int(tail) + 1:02d}" if tail.isdigit() else trial_id


@dataclass
class TrialRecord:
    trial_id: str
    name: str
    """The scheduler's own name for it (Ray's ``trainable_…_00003``, the grid's combination)."""
    initial_config: dict[str, Any]
    status: str = Status.PENDING
    history: list[Iteration] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    error: str = ""
    retries: int = 0
    """Times the trial failed and was restarted from its last checkpoint (``tune.max_failures``)."""
    superseded: list[Iteration] = field(default_factory=list)
    """Rows the trial trained and then went back behind: an iteration run again after a fault, or
    after an exploit that restored an earlier checkpoint. ``history`` is what the trial continued
    from; these are kept beside it (each with the checkpoint it started from) because they were
    trained: the budget and the trial's time count them."""

    @property
    def label(self) -> str:
        """The name a person reads: ``c03``."""
        return short_id(self.trial_id)

    @property
    def last(self) -> Iteration | None:
        return self.history[-1] if self.history else None

    @property
    def final_config(self) -> dict[str, Any]:
        """The hyperparameters the trial ended with (PBT mutates them)."""
        return self.last.hparams.as_dict() if self.last else dict(self.initial_config)

    @property
    def iterations(self) -> int:
        return self.last.iteration if self.last else 0

    @property
    def eval_loss(self) -> float:
        value = self.last.eval_loss if self.last else None
        return math.nan if value is None else float(value)

    @property
    def all_rows(self) -> list[Iteration]:
        """Every iteration the trial trained, superseded ones included, in the order they arrived."""
        return sorted(self.history + self.superseded, key=lambda r: r.received_at or 0.0)

    @property
    def rows_run(self) -> int:
        """Iterations trained by this trial (reruns included): what the budget counts."""
        return len(self.history) + len(self.superseded)

    @property
    def runtime_s(self) -> float:
        """Seconds this trial spent training and evaluating (its own iterations, reruns included)."""
        return float(sum(row.seconds for row in self.history + self.superseded))

    @property
    def exploits(self) -> list[dict[str, Any]]:
        """PBT exploits: the donor this trial cloned, the iteration it restarted from, its new config."""
        return [
            {"trial": self.trial_id, "donor": row.exploited_from, "from_iteration": int(row.segment_start_iteration or 0),
             "config": row.hparams.as_dict()}
            for row in self.all_rows if row.exploited_from  # one later superseded was an exploit all the same
        ]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["status"] = str(self.status)
        out["history"] = [row.to_dict() for row in self.history]
        out["superseded"] = [row.to_dict() for row in self.superseded]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        values = dict(data)
        values["history"] = [Iteration.from_metrics(row) for row in values.get("history", [])]
        values["superseded"] = [Iteration.from_metrics(row) for row in values.get("superseded", [])]
        return cls(**values)


@dataclass
class RunRecord:
    strategy: str
    preset: str
    seed: int
    config: dict[str, Any]
    started_at: float
    finished_at: float = 0.0
    trials: list[TrialRecord] = field(default_factory=list)
    mlflow_run_id: str = ""
    mlflow_children: dict[str, str] = field(default_factory=dict)
    """trial id -> its MLflow child run: what a resume continues."""
    slots: int = 0
    """Trials that could run at once (1 for the sequential manual grid)."""
    budget_trial_iterations: int = 0
    """The comparison's budget this run was given (``ExperimentConfig.budget_iterations``)."""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """One entry per ``--resume``: when, how long the run stood still (``down_s``), and the
    iterations (and trial-seconds) it trained again because they were not checkpointed."""
    stopped: str = ""
    """Why the run stopped before its trials were done (SIGUSR1 before a time limit), or ""."""
    last_event_at: float = 0.0
    """When the newest event was written (the run's end, if it never wrote ``run_finished``)."""
    tracking: bool = True
    """Whether the run writes MLflow runs (``--no-mlflow``: not), as its first driver was told."""
    discarded: list[TrialRecord] = field(default_factory=list)
    """Trials of a driver that died before Ray Tune saved any state: a resume starts the work over
    as new trials, and these are kept for the accounting (their iterations were trained)."""
    _since_resume: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def wall_s(self) -> float:
        return (self.finished_at or self.last_event_at) - self.started_at

    def trial(self, trial_id: str) -> TrialRecord:
        for rec in self.trials:
            if rec.trial_id == trial_id:
                return rec
        raise KeyError(f"trial {trial_id} was never started")

    def best_trial(self) -> TrialRecord | None:
        done = [t for t in self.trials if t.history and not math.isnan(t.eval_loss)]
        finished = [t for t in done if t.status == Status.TERMINATED] or done
        return min(finished, key=lambda t: t.eval_loss) if finished else None

    def exploits(self) -> list[dict[str, Any]]:
        return [e for t in self.trials for e in t.exploits]

    @property
    def open_trials(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status not in ENDED]

    @property
    def iterations_done(self) -> int:
        return sum(t.iterations for t in self.trials)

    @property
    def iterations_run(self) -> int:
        """Trial-iterations trained, what the budget counts: every reported row is one iteration of
        training, counted where it was trained (whoever inherits it through an exploit), an iteration
        run twice twice, discarded trials included."""
        return sum(t.rows_run for t in self.trials + self.discarded)

    @property
    def rerun_iterations(self) -> int:
        """Iterations trained again: superseded rows, and the discarded trials' rows."""
        return sum(len(t.superseded) for t in self.trials) + sum(t.rows_run for t in self.discarded)

    # -- the fold: one event at a time, in the order they were written ---------------------

    @classmethod
    def started(cls, event: Mapping[str, Any]) -> RunRecord:
        """The record a ``run_started`` event opens."""
        return cls(strategy=event["strategy"], preset=event["preset"], seed=int(event["seed"]), config=event["config"],
                   started_at=float(event["at"]), budget_trial_iterations=int(event["budget"]),
                   last_event_at=float(event["at"]), tracking=bool(event.get("tracking", True)))

    def apply(self, event: Mapping[str, Any]) -> None:
        """Fold one later event into the record.

        A trial can report an iteration it has reported before: after a resume Ray Tune (or the
        manual grid) continues each trial from the last checkpoint it had saved, and a PBT exploit
        can restore a checkpoint older than the trial's last iteration. The new row is what the
        trial continues from; the earlier rows from that iteration on move to the trial's
        ``superseded`` rows (kept, and counted as trained). After a resume they also count as
        redone work (``resumes``: how many iterations, how many trial-seconds, and how long the
        run was down). A resume that found no Ray Tune state discards the trials it knew
        (``trials_discarded``): their work starts over as new trials.
        """
        kind, at = event["event"], float(event["at"])
        if kind == "mlflow_parent":
            self.mlflow_run_id, self.tracking = event["run_id"], True
        elif kind == "mlflow_child":
            self.mlflow_children[event["trial_id"]] = event["run_id"]
        elif kind == "trial_started":
            if not any(t.trial_id == event["trial_id"] for t in self.trials):
                self.trials.append(TrialRecord(trial_id=event["trial_id"], name=event["name"],
                                               initial_config={k: event["config"][k] for k in HPARAMS
                                                               if k in event["config"]},
                                               started_at=at))
            self.trial(event["trial_id"]).status = Status.RUNNING
        elif kind == "trial_result":
            self._add_row(self.trial(event["trial_id"]), Iteration.from_metrics(event["row"], received_at=at))
        elif kind == "trial_retried":
            rec = self.trial(event["trial_id"])
            rec.retries += 1
            rec.error = event.get("error", "")
        elif kind == "trial_ended":
            rec = self.trial(event["trial_id"])
            rec.status, rec.ended_at, rec.error = Status(event["status"]), at, event.get("error", "")
        elif kind == "trials_discarded":
            gone = [t for t in self.trials if t.trial_id in set(event["trial_ids"])]
            self.trials = [t for t in self.trials if t not in gone]
            self.discarded.extend(gone)
            if self.resumes:
                self.resumes[-1]["redone_iterations"] += sum(t.rows_run for t in gone)
                self.resumes[-1]["redone_s"] += sum(t.runtime_s for t in gone)
        elif kind == "resumed":
            self._since_resume = {t.trial_id for t in self.trials}
            self.resumes.append({"at": at, "down_s": at - self.last_event_at, "redone_iterations": 0, "redone_s": 0.0})
            self.finished_at, self.stopped = 0.0, ""
        elif kind == "run_finished":
            self.finished_at, self.slots = at, int(event.get("slots") or self.slots)
            self.stopped = event.get("stopped", "")
        self.last_event_at = at

    def _add_row(self, rec: TrialRecord, row: Iteration) -> None:
        redone = [r for r in rec.history if r.iteration >= row.iteration]
        if redone:
            rec.history = [r for r in rec.history if r.iteration < row.iteration]
            rec.superseded.extend(redone)
            if rec.trial_id in self._since_resume:
                self.resumes[-1]["redone_iterations"] += len(redone)
                self.resumes[-1]["redone_s"] += sum(r.seconds for r in redone)
        self._since_resume.discard(rec.trial_id)
        rec.history.append(row)

    # -- the saved form ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["trials"] = [t.to_dict() for t in self.trials]
        out["discarded"] = [t.to_dict() for t in self.discarded]
        out["wall_s"] = self.wall_s
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        values = {k: v for k, v in data.items() if k in names}
        values["trials"] = [TrialRecord.from_dict(t) for t in data["trials"]]
        values["discarded"] = [TrialRecord.from_dict(t) for t in data.get("discarded", [])]
        if not values.get("last_event_at"):
            values["last_event_at"] = float(values.get("finished_at") or values["started_at"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        return cls.from_dict(json.loads(Path(path).read_text()))

