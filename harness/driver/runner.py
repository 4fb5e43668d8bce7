"""One benchmark invocation: config -> prepared inputs -> strategy -> record -> tables + MLflow."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import strategies, tasks
from harness.cluster import stop
from harness.cluster.devices import cuda_devices
from harness.cluster.provenance import provenance
from harness.cluster.reachability import tracking_problem
from harness.cluster.redaction import RedactCredentials
from harness.config import ExperimentConfig
from harness.contract import events
from harness.contract.record import RunRecord, Status
from harness.contract.rundir import RunDir
from harness.contract.sink import Sinks
from harness.driver.preflight import preflight
from harness.reporting.analysis import summarize
from harness.reporting.console import Progress
from harness.reporting.report import write_tables
from harness.trial import cache as trial_cache

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    record: RunRecord
    run_dir: RunDir
    tables_markdown: str
    cfg: ExperimentConfig
    tracking_uri: str

    @property
    def failed_trials(self) -> list[str]:
        return [t.label for t in self.record.trials if t.status == Status.ERROR]


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Every log line of the run (all libraries, INFO and up) into ``<run>/harness.log``, while it runs."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def summary_metrics(record: RunRecord) -> dict[str, float]:
    """The run's headline figures for its MLflow parent run (from the same analysis as the report)."""
    s = summarize(record)
    return {k: float(v) for k, v in s.as_row().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunStopped(Exception):
    """A stop was requested (SIGUSR1, SIGTERM) before the strategy started anything: the run folder
    is left resumable, nothing else was started."""

    def __init__(self, run_dir: RunDir, reason: str):
        super().__init__(reason)
        self.run_dir, self.reason = run_dir, reason


def _stop_point(run_dir: RunDir, what: str) -> None:
    """Honour a stop request that came during start-up, before anything was started."""
    signal_name = stop.requested()
    if signal_name:
        reason = f"{signal_name} during {what}"
        log.warning("%s: nothing started; continue with --resume %s", reason, run_dir)
        run_dir.event_log().write("run_finished", slots=0, stopped=reason)
        raise RunStopped(run_dir, reason)


def run(cfg: ExperimentConfig, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    stop.install()  # `python -m harness` did on its first line; a library call starts here
    preflight(cfg, here=ray_address == "local", tracking=tracking)
    cfg = cfg.model_copy(update={"results_dir": str(Path(cfg.results_dir).resolve())})
    name = cfg.run_name or f"{cfg.strategy}-{Path(cfg.preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    # config.json and the event log's first line, or no folder at all: --resume takes whatever exists
    run_dir = RunDir.create(cfg.results_dir, name, config=cfg.to_json(),
                            first_event=dict(strategy=cfg.strategy, preset=cfg.preset, seed=cfg.seed,
                                             config=cfg.to_dict(), budget=cfg.budget_iterations(), tracking=tracking))
    with _logging_to(run_dir.log_file):
        log.info("run folder: %s (full log: harness.log, trial processes: logs/)", run_dir)
        return _run(cfg, run_dir, ray_address, verbose, tracking, previous=None, restore=False)


def resume(path: str | Path, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    """Continue a run whose driver died or stopped, at any moment: the same folder, the same MLflow
    runs. Ray Tune's saved state continues where it is; without one (the driver died before Ray
    Tune saved any), the unfinished work starts over from what the event log knows. A run that is
    already complete gets its record, tables and MLflow runs brought up to date."""
    stop.install()
    run_dir = RunDir.existing(path, what="--resume")
    previous = run_dir.replay()
    cfg = ExperimentConfig.from_dict(run_dir.config_data())
    if tracking and not previous.tracking:
        log.info("%s ran without MLflow (--no-mlflow); it continues without it", run_dir)
        tracking = False
    complete = events.complete(previous)
    if not complete:  # a complete run is only brought up to date: nothing to check
        # MLflow is not a reason to refuse a resume (its calls are spooled until it answers); the rest is
        preflight(cfg, here=ray_address == "local", tracking=False)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")  # a server (the local sqlite store needs no probe)
    if tracking and uri and (problem := tracking_problem(uri)):
        log.warning("%s; the run goes on and its MLflow events wait in %s until it answers", problem,
                    run_dir.spool_file)
    restore = True
    if not strategies.spec(cfg.strategy).sequential and not complete:
        from harness.strategies import (
            ray_compat,  # Ray Tune, 1.4 s: only a Ray strategy's resume asks
        )

        restore = ray_compat.tune_state_saved(run_dir.experiment_dir)
    with _logging_to(run_dir.log_file):
        return _run(cfg, run_dir, ray_address, verbose, tracking, previous=previous, restore=restore)


def _stopped(record: RunRecord, cfg: ExperimentConfig) -> str:
    """Why the run is incomplete ("" when every planned trial ended)."""
    spec = strategies.spec(cfg.strategy)
    open_trials = record.open_trials
    missing = (spec.planned_trials(cfg) - len(record.trials)) if spec.trials != strategies.TRIALS_UNTIL_SPENT else 0
    if record.trials and not open_trials and missing <= 0:
        return ""  # every trial ended, even if a stop was asked for at the very end
    if stop.requested():
        return {"SIGUSR1": "SIGUSR1 (a time limit)"}.get(stop.requested(), stop.requested())
    # Ray Tune stopped on SIGUSR1 (its own handler), or the driver failed
    return f"{len(open_trials)} trial(s) unfinished, {max(0, missing)} not started"


def _continue(run_dir: RunDir, previous: RunRecord, restore: bool) -> RunRecord:
    """The events that open a resumed driver; returns the record with them folded in."""
    log_events = run_dir.event_log()
    previous.apply(log_events.write("resumed", pid=os.getpid(), tune_state=restore))
    if not restore and previous.trials:
        ids = [t.trial_id for t in previous.trials]
        redo = previous.iterations_done
        log.warning("Ray Tune saved no state before the driver died: the %d trial(s) it started are done over as new "
                    "trials (%d iteration(s) redone)", len(ids), redo)
        previous.apply(log_events.write("trials_discarded", trial_ids=ids, iterations=redo))
    if not restore and run_dir.experiment_dir.exists():
        shutil.rmtree(run_dir.experiment_dir)  # no state to restore: Ray Tune starts the experiment afresh
    log.info("resuming %s: %d trial(s) known, %d iteration(s) done%s", run_dir, len(previous.trials),
             previous.iterations_done, "" if restore else " (starting over: no Ray Tune state)")
    return previous


def _run(cfg: ExperimentConfig, run_dir: RunDir, ray_address: str, verbose: bool, tracking: bool,
         previous: RunRecord | None, restore: bool) -> Outcome:
    complete = previous is not None and events.complete(previous)
    if complete:
        log.info("%s is complete: its record, tables and MLflow runs are brought up to date", run_dir)
    else:
        if previous is not None:
            previous = _continue(run_dir, previous, restore)
        _stop_point(run_dir, "start-up")
    # MLflow (1.5 s to import): only once a run really starts
    from harness.reporting.tracking import NoTracker, Tracker, tracking_uri

    log_events = run_dir.event_log()
    spec = strategies.spec(cfg.strategy)
    task = tasks.get(cfg.task)
    model_path = data_path = ""
    cache = trial_cache.root(cfg.results_dir)
    if not complete and task.needs_model:
        # torch and transformers: seconds to import, only for a task that trains a model
        from harness.trial.data import prepare
        from harness.trial.model import load_tokenizer, resolve_model_path

        cuda_devices()
        model_path = resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache)
        data_path = str(prepare(cfg.data, load_tokenizer(model_path), seed=cfg.seed,
                                max_length=cfg.model.max_length, cache_dir=cache))
        log.info("model: %s; tokenized data: %s", model_path, data_path)
        _stop_point(run_dir, "start-up")
    elif not complete:
        log.info("task %s trains no model: nothing to prepare", task.name)

    tracker_cm = (Tracker(cfg, run_dir, tags=provenance(), events=log_events, previous=previous,
                          resumed=previous is not None and not complete) if tracking else NoTracker())
    with tracker_cm as tracker:
        if complete:
            assert previous is not None
            record = previous
            run_dir.save_record(record)
        else:
            record = _run_strategy(cfg, run_dir, ray_address, verbose, previous, restore, model_path, data_path,
                                   str(cache), tracker)
        if record.stopped:
            tracker.stopped(record.stopped)
        text, tables_dir = write_tables(record, run_dir.tables_dir)
        artifacts_dir = run_dir.artifacts_dir
        for pattern in spec.artifacts:
            for path in run_dir.experiment_dir.glob(pattern):
                artifacts_dir.mkdir(exist_ok=True)
                shutil.copy2(path, artifacts_dir / path.name)
        tracker.log_summary(summary_metrics(record),
                            [run_dir.config_file, run_dir.record_file, tables_dir, artifacts_dir])
    return Outcome(record=record, run_dir=run_dir, tables_markdown=text, cfg=cfg, tracking_uri=tracking_uri(cfg.results_dir))


def _run_strategy(cfg: ExperimentConfig, run_dir: RunDir, ray_address: str, verbose: bool, previous: RunRecord | None,
                  restore: bool, model_path: str, data_path: str, cache: str, tracker: Any) -> RunRecord:
    """The strategy itself, then the one replay of the event log: the record, with its end folded in."""
    log_events = run_dir.event_log()
    progress = Progress(metric=cfg.tune.metric, mode=cfg.tune.mode, budget=cfg.budget_iterations(),
                        planned=cfg.train.iterations, already=previous.iterations_done if previous else 0)
    ctx = strategies.StrategyContext(cfg=cfg, run_dir=run_dir, model_path=model_path, data_path=data_path,
                                     cache_dir=cache, ray_address=ray_address,
                                     sinks=Sinks([log_events, tracker, progress]), verbose=verbose,
                                     previous=previous, restore=restore, stop=stop.event())
    slots = 0
    stop.running()  # a SIGTERM from here on ends the driver at once (the watchdog ends what it started)
    try:
        slots = strategies.get(cfg.strategy)(ctx).slots
    finally:
        stop.idle()
        record = run_dir.replay()  # the one replay: the end is folded in, not read again
        stopped = _stopped(record, cfg)
        record.apply(log_events.write("run_finished", slots=slots or (previous.slots if previous else 0),
                                      stopped=stopped))
        run_dir.save_record(record)
    return record
