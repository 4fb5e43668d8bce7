"""The run record: what happened to every trial, from Ray's results as they arrive.

Every trial event reaches the driver through a Ray Tune callback (also with ``reuse_actors=True``,
where Ray's own ``result.json`` lost rows) and is appended to the run's event log
(``harness.contract.events``); the record is derived from that log, saved as ``run_record.json`` in the
run folder, and is the only input of the tables and of later analysis: nothing is scraped from
the console.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.trial.segment import HPARAMS, PHASES, phase_key

RECORD_FILE = "run_record.json"
#: Result keys kept per iteration.
HISTORY_KEYS = (
    "iteration", "training_iteration", "eval_loss", "train_loss", "epoch", *HPARAMS,
    "optimizer_lr", "optimizer_weight_decay", "time_this_iter_s", "exploited_from",
    "segment_start_iteration", "world_size", "node_ip", "pid", *(phase_key(p) for p in PHASES),
)


def short_id(trial_id: str) -> str:
    """``c01``, ``c02``...: the trial's number in its run (Ray's ``trainable_3e890_00003`` and the
    grid's ``manual_00003`` both end in their 0-based index), for names a person can read."""
    tail = trial_id.rsplit("_", 1)[-1]
    return f"c{int(tail) + 1:02d}" if tail.isdigit() else trial_id


@dataclass
class TrialRecord:
    trial_id: str
    name: str
    initial_config: dict[str, Any]
    status: str = "PENDING"
    history: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    error: str = ""
    retries: int = 0
    """Times the trial failed and was restarted from its last checkpoint (``tune.max_failures``)."""

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def final_config(self) -> dict[str, Any]:
        last = self.last
        return {k: last[k] for k in HPARAMS} if last else dict(self.initial_config)

    @property
    def iterations(self) -> int:
        return int(self.last.get("iteration", 0))

    @property
    def eval_loss(self) -> float:
        return float(self.last.get("eval_loss", math.nan))

    @property
    def runtime_s(self) -> float:
        """Seconds this trial spent training and evaluating (its own iterations only)."""
        return float(sum(row.get("time_this_iter_s") or 0.0 for row in self.history))

    @property
    def exploits(self) -> list[dict[str, Any]]:
        """PBT exploits: the donor this trial cloned, the iteration it restarted from, its new config."""
        return [
            {
                "trial": self.trial_id,
                "donor": row["exploited_from"],
                "from_iteration": int(row["segment_start_iteration"]),
                "config": {k: row[k] for k in HPARAMS},
            }
            for row in self.history
            if row.get("exploited_from")
        ]


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
    slots: int = 0
    """Trials that could run at once (1 for the sequential manual grid)."""
    budget_trial_iterations: int = 0
    """The comparison's budget this run was given (``ExperimentConfig.budget_iterations``)."""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """One entry per ``--resume``: when, how long the run stood still (``down_s``), and the
    iterations (and trial-seconds) it trained again because they were not checkpointed."""
    stopped: str = ""
    """Why the run stopped before its trials were done (SIGUSR1 before a time limit), or ""."""

    @property
    def wall_s(self) -> float:
        return self.finished_at - self.started_at

    def best_trial(self) -> TrialRecord | None:
        done = [t for t in self.trials if t.history and not math.isnan(t.eval_loss)]
        finished = [t for t in done if t.status == "TERMINATED"] or done
        return min(finished, key=lambda t: t.eval_loss) if finished else None

    def exploits(self) -> list[dict[str, Any]]:
        return [e for t in self.trials for e in t.exploits]

    # -- sink interface: the same three events from any strategy (Ray or not) --------------

    def _trial(self, trial_id: str) -> TrialRecord:
        for rec in self.trials:
            if rec.trial_id == trial_id:
                return rec
        raise KeyError(f"trial {trial_id} was never started")

    def trial_started(self, trial_id: str, name: str, config: dict[str, Any]) -> None:
        """A trial (re)starts; PBT restarts exploited trials, which keep their first record."""
        if not any(rec.trial_id == trial_id for rec in self.trials):
            self.trials.append(TrialRecord(trial_id=trial_id, name=name,
                                           initial_config={k: config[k] for k in HPARAMS if k in config}))
        rec = self._trial(trial_id)
        rec.status = "RUNNING"
        if rec.started_at is None:
            rec.started_at = time.time()

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        row = {k: result.get(k) for k in HISTORY_KEYS}
        row["received_at"] = time.time()
        self._trial(trial_id).history.append(row)

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        rec = self._trial(trial_id)
        rec.status, rec.ended_at, rec.error = status, time.time(), error

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["wall_s"] = self.wall_s
        return out

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RECORD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        if path.is_dir():
            path = path / RECORD_FILE
        data = json.loads(path.read_text())
        data.pop("wall_s", None)
        data["trials"] = [TrialRecord(**t) for t in data["trials"]]
        return cls(**data)
