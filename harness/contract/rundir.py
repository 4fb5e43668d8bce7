"""A run folder: the one place its layout is spelled.

::

    <results>/<run>/
      config.json            the resolved configuration (what --resume runs again)
      events.jsonl           the append-only event log (harness.contract.events)
      run_record.json        derived from it: every trial's history
      mlflow_spool.jsonl     MLflow calls the tracking server did not take yet
      manual_checkpoints/    the manual grid: the newest checkpoint of the combination in flight
      tables/                the seed's tables, markdown and CSV
      harness.log, logs/ray/ the run's full log, the trial processes' output
      strategy_artifacts/    what the strategy's registry entry names (PBT's policy logs)
      ray/                   Ray Tune's experiment folder (checkpoints, its saved state)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract import events
from harness.contract.errors import InputError
from harness.contract.record import RunRecord


class _In:
    """A path inside the run folder (a descriptor: ``run_dir.config_file`` is ``<run>/config.json``)."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, run_dir: RunDir | None, owner: type) -> Any:
        return self if run_dir is None else run_dir.path.joinpath(*self.parts)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).resolve())

    # -- the layout, one line each -------------------------------------------------------------
    experiment_name = "ray"
    config_file = _In("config.json")
    events_file = _In("events.jsonl")
    record_file = _In("run_record.json")
    spool_file = _In("mlflow_spool.jsonl")
    manual_checkpoints = _In("manual_checkpoints")
    tables_dir = _In("tables")
    log_file = _In("harness.log")
    ray_logs = _In("logs", "ray")
    artifacts_dir = _In("strategy_artifacts")
    experiment_dir = _In(experiment_name)
    """Ray Tune's experiment folder (``RunConfig(storage_path=<run>, name=experiment_name)``)."""

    def __str__(self) -> str:
        return str(self.path)

    # -- making and finding one ---------------------------------------------------------------

    @classmethod
    def create(cls, results_dir: str | Path, name: str, *, config: str, first_event: dict[str, Any]) -> RunDir:
        """A new run folder ``<results_dir>/<name>`` (``-2``, ``-3``... when taken: two runs' files
        never mix) holding ``config.json`` and the event log's first line (``run_started`` with
        ``first_event``'s fields). Both are written in a hidden folder that is then renamed into
        place, so a folder by that name always has both: a driver killed at any moment leaves a
        run that ``--resume`` takes, or nothing."""
        results = Path(results_dir)
        results.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=results))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # as a plain mkdir would make it (mkdtemp's is private)
        (staging / cls.config_file.parts[-1]).write_text(config)
        events.EventLog(staging / cls.events_file.parts[-1]).write("run_started", **first_event)
        base = results / name
        path, n = base, 1
        while True:
            try:
                os.rename(staging, path)  # fails on an existing folder (non-empty) or file: never merges two runs
                break
            except OSError:
                if not path.exists():
                    raise
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path, *, what: str) -> RunDir:
        """The run folder at ``path``; :class:`InputError` (naming ``what`` the user gave) when it
        is not one."""
        run_dir = cls(Path(path))
        if not run_dir.events_file.is_file() or not run_dir.config_file.is_file():
            raise InputError(f"{what} {str(path)!r} is not a run folder of this harness (no {run_dir.events_file.name} "
                             f"and {run_dir.config_file.name}); give a folder under results/")
        return run_dir

    @classmethod
    def with_record(cls, path: str | Path) -> RunDir:
        """A finished run's folder (``run_record.json``), for the tables and the comparison."""
        run_dir = cls(Path(path))
        if not run_dir.record_file.is_file():
            raise InputError(f"{str(path)!r} holds no {run_dir.record_file.name}; give a run folder under results/")
        return run_dir

    # -- what it holds ------------------------------------------------------------------------

    def write_config(self, text: str) -> None:
        self.config_file.write_text(text)

    def config_data(self) -> dict[str, Any]:
        return json.loads(self.config_file.read_text())

    def event_log(self) -> events.EventLog:
        return events.EventLog(self.events_file)

    def replay(self) -> RunRecord:
        """The record the event log describes so far (one read of the log)."""
        return events.replay(self.events_file)

    def save_record(self, record: RunRecord) -> Path:
        return record.save(self.record_file)

    def record(self) -> RunRecord:
        """The record saved at the end of the run."""
        return RunRecord.load(self.record_file)
