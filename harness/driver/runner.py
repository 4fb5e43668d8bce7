"""One benchmark invocation: config -> prepared inputs -> strategy -> record -> tables + MLflow."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import strategies
from harness.cluster.devices import cuda_devices
from harness.cluster.provenance import provenance
from harness.cluster.redaction import RedactCredentials
from harness.config import ConfigError, ExperimentConfig
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


def run(cfg: ExperimentConfig, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    preflight(cfg, here=ray_address == "local", tracking=tracking)
    cfg = cfg.model_copy(update={"results_dir": str(Path(cfg.results_dir).resolve())})
    name = cfg.run_name or f"{cfg.strategy}-{Path(cfg.preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = RunDir.create(cfg.results_dir, name)
    with _logging_to(run_dir.log_file):
        return _run(cfg, run_dir, ray_address, verbose, tracking, previous=None)


def resume(path: str | Path, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    """Continue a run whose driver died or stopped: the same folder, the same MLflow runs."""
    run_dir = RunDir.existing(path, what="--resume")
    previous = run_dir.replay()
    if events.complete(previous):
        raise ConfigError(f"--resume {str(run_dir)!r}: the run is complete, nothing to resume")
    cfg = ExperimentConfig.from_dict(run_dir.config_data())
    if tracking and not previous.mlflow_run_id:
        log.info("%s ran without MLflow (--no-mlflow); it continues without it", run_dir)
        tracking = False
    preflight(cfg, here=ray_address == "local", tracking=tracking)
    if not strategies.spec(cfg.strategy).sequential:
        from ray.tune import Tuner  # 1.4 s: only a Ray strategy's resume asks

        if not Tuner.can_restore(str(run_dir.experiment_dir)):
            raise ConfigError(f"--resume {str(run_dir)!r}: Ray Tune saved no experiment state in it before the driver "
                              "died; this run cannot be continued, start it again")
    with _logging_to(run_dir.log_file):
        return _run(cfg, run_dir, ray_address, verbose, tracking, previous=previous)


def _stop_on_usr1(stop: threading.Event) -> None:
    """SLURM sends SIGUSR1 before the time limit (--signal=B:USR1@margin, forwarded by the head job):
    finish the iteration in flight, keep its checkpoint, and stop. Ray Tune installs its own
    handler for the same signal while it runs, and stops the same way."""
    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGUSR1: stopping after the iteration in flight; continue with --resume")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, handler)


def _stopped(record: RunRecord, cfg: ExperimentConfig, stop: threading.Event) -> str:
    """Why the run is incomplete ("" when every planned trial ended)."""
    spec = strategies.spec(cfg.strategy)
    open_trials = record.open_trials
    missing = (spec.planned_trials(cfg) - len(record.trials)) if spec.trials != strategies.TRIALS_UNTIL_SPENT else 0
    if stop.is_set():
        return "SIGUSR1 (a time limit)"
    if open_trials or missing > 0:  # Ray Tune stopped on SIGUSR1 (its own handler), or the driver failed
        return f"{len(open_trials)} trial(s) unfinished, {max(0, missing)} not started"
    return ""


def _run(cfg: ExperimentConfig, run_dir: RunDir, ray_address: str, verbose: bool, tracking: bool,
         previous: RunRecord | None) -> Outcome:
    # torch and transformers (seconds to import), MLflow (1.5 s): only once a run really starts
    from harness.reporting.tracking import NoTracker, Tracker, tracking_uri
    from harness.trial.data import prepare
    from harness.trial.model import load_tokenizer, resolve_model_path

    log_events = run_dir.event_log()
    if previous is None:
        run_dir.write_config(cfg.to_json())
        log_events.write("run_started", strategy=cfg.strategy, preset=cfg.preset, seed=cfg.seed,
                         config=cfg.to_dict(), budget=cfg.budget_iterations())
        log.info("run folder: %s (full log: harness.log, trial processes: logs/)", run_dir)
    else:
        log_events.write("resumed", pid=os.getpid())
        log.info("resuming %s: %d trial(s) known, %d iteration(s) done", run_dir, len(previous.trials),
                 previous.iterations_done)

    cuda_devices()
    cache = trial_cache.root(cfg.results_dir)
    model_path = resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache)
    data_path = prepare(cfg.data, load_tokenizer(model_path), seed=cfg.seed,
                        max_length=cfg.model.max_length, cache_dir=cache)
    log.info("model: %s; tokenized data: %s", model_path, data_path)
    spec = strategies.spec(cfg.strategy)
    strategy = strategies.get(cfg.strategy)
    stop = threading.Event()
    _stop_on_usr1(stop)

    tracker_cm = Tracker(cfg, run_dir, tags=provenance(), events=log_events, previous=previous) if tracking else NoTracker()
    with tracker_cm as tracker:
        if previous is None and tracker.parent_id:
            log_events.write("mlflow_parent", run_id=tracker.parent_id)
        progress = Progress(metric=cfg.tune.metric, mode=cfg.tune.mode, budget=cfg.budget_iterations(),
                            planned=cfg.train.iterations, already=previous.iterations_done if previous else 0)
        ctx = strategies.StrategyContext(cfg=cfg, run_dir=run_dir, model_path=model_path, data_path=str(data_path),
                                         cache_dir=str(cache), ray_address=ray_address,
                                         sinks=Sinks([log_events, tracker, progress]), verbose=verbose,
                                         previous=previous, stop=stop)
        slots = 0
        try:
            slots = strategy(ctx).slots
        finally:
            record = run_dir.replay()  # the one replay: the end is folded in, not read again
            stopped = _stopped(record, cfg, stop)
            record.apply(log_events.write("run_finished", slots=slots or (previous.slots if previous else 0),
                                          stopped=stopped))
            run_dir.save_record(record)
        if stopped:
            tracker.stopped(stopped)
        text, tables_dir = write_tables(record, run_dir.tables_dir)
        artifacts_dir = run_dir.artifacts_dir
        for pattern in spec.artifacts:
            for path in run_dir.experiment_dir.glob(pattern):
                artifacts_dir.mkdir(exist_ok=True)
                shutil.copy2(path, artifacts_dir / path.name)
        tracker.log_summary(summary_metrics(record),
                            [run_dir.config_file, run_dir.record_file, tables_dir, artifacts_dir])
    return Outcome(record=record, run_dir=run_dir, tables_markdown=text, cfg=cfg, tracking_uri=tracking_uri(cfg.results_dir))
