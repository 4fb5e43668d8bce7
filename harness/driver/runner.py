"""One benchmark invocation: config -> prepared inputs -> strategy -> record -> tables + MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
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
from harness.cluster.capacity import CapacityError, Node, TrialShape, plan
from harness.config import ConfigError, ExperimentConfig
from harness.contract.record import RunRecord, short_id

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    record: RunRecord
    run_dir: Path
    tables_markdown: str
    cfg: ExperimentConfig

    @property
    def failed_trials(self) -> list[str]:
        return [t.name for t in self.record.trials if t.status == "ERROR"]


def preflight(cfg: ExperimentConfig, ray_address: str = "local", *, tracking: bool = True) -> None:
    """Refuse, before anything starts, what cannot run here; each message names the fix."""
    strategy = strategies.spec(cfg.strategy)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking and uri:
        from harness.cluster.reachability import tracking_problem

        problem = tracking_problem(uri)
        if problem:
            raise ConfigError(f"{problem}; start it, unset MLFLOW_TRACKING_URI for the local sqlite store, "
                              "or run without MLflow: --no-mlflow (the run folder keeps every record)")
    if strategy.exploits and strategy.planned_trials(cfg) < 2:
        raise ConfigError(
            f"budget.trial_iterations={cfg.budget_iterations()} gives {cfg.strategy} a population of "
            f"{strategy.planned_trials(cfg)} (budget / train.iterations={cfg.train.iterations}); a population "
            f"needs at least 2 trials to exploit: raise the budget to {2 * cfg.train.iterations} or more"
        )
    src = cfg.data.source
    if src != "synthetic" and not src.startswith("hub:") and not Path(src).is_file():
        from harness.trial.prepare import dataset_complete, dataset_slot

        if not dataset_complete(dataset_slot(cache_dir(cfg), src)):
            raise ConfigError(f"data.source={src!r} is not a file (nor in the prepared cache {cache_dir(cfg)}); "
                              "give a SQuAD JSON file, synthetic or hub:<namespace>/<name>")
    gpus = cpu_only_deepspeed()
    if cfg.train.fp16 and gpus == 0 and ray_address == "local":
        raise ConfigError(
            "train.fp16=true needs a CUDA GPU and this machine has none; "
            "use --set train.fp16=false (or the smoke preset) on CPU"
        )
    if cfg.train.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "train.deepspeed=true needs the deepspeed package, which is not installed; "
            "install it (DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed) or use --set train.deepspeed=false"
        )
    if ray_address == "local":
        r = cfg.resources
        shape = TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker)
        try:
            log.info("capacity: %s", plan([Node(cpus=os.cpu_count() or 1, gpus=gpus)], shape,
                                            strategy.planned_trials(cfg)).summary())
        except CapacityError as exc:
            raise CapacityError(f"on this machine {exc}") from None


def cpu_only_deepspeed() -> int:
    """The number of CUDA devices; with none, tell DeepSpeed (imported by transformers) so, or it
    warns in every process that it chose the CPU."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return gpus


def _run_dir(cfg: ExperimentConfig) -> Path:
    name = cfg.run_name or f"{cfg.strategy}-{Path(cfg.preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    base = Path(cfg.results_dir) / name
    run_dir, n = base, 1
    while run_dir.exists():  # never mix two runs' files
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


class Progress:
    """A sink that logs one line per reported iteration: how much of the budget is spent, the
    trial, its metric, and the best so far (on the console instead of Ray's trial table)."""

    def __init__(self, cfg: ExperimentConfig, already: int = 0):
        self.metric, self.mode = cfg.tune.metric, cfg.tune.mode
        self.budget, self.planned = cfg.budget_iterations(), cfg.train.iterations
        self.spent = already
        self.best: tuple[float, str] | None = None
        self.log = logging.getLogger("harness.progress")

    def trial_started(self, trial_id: str, name: str, config: dict) -> None:
        pass

    def trial_result(self, trial_id: str, result: dict) -> None:
        self.spent += 1
        value = result.get(self.metric)
        who = short_id(trial_id)
        if value is not None and (self.best is None or (value < self.best[0] if self.mode == "min"
                                                       else value > self.best[0])):
            self.best = (float(value), who)
        donor = result.get("exploited_from")
        nan = float("nan")
        self.log.info(
            "%3d/%d iterations  %s it %s/%d  %s %.4f  lr %.2e bs %s wd %g%s  best %.4f (%s)",
            self.spent, self.budget, who, result.get("iteration"), self.planned, self.metric,
            nan if value is None else value, result.get("lr") or nan, result.get("per_device_train_batch_size"),
            result.get("weight_decay") or 0, f"  (from {short_id(donor)}'s checkpoint)" if donor else "",
            self.best[0] if self.best else nan, self.best[1] if self.best else "-",
        )

    def trial_retried(self, trial_id: str, error: str) -> None:
        last = error.strip().splitlines()[-1] if error.strip() else "no error message"
        self.log.warning("%s failed (%s); restarting it from its last checkpoint", short_id(trial_id), last)

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        if status != "TERMINATED":
            last = error.strip().splitlines()[-1] if error.strip() else "no error message"
            self.log.warning("%s ended %s: %s", short_id(trial_id), status, last)


@contextlib.contextmanager
def _logging_to(run_dir: Path) -> Iterator[None]:
    """Every log line of the run (all libraries, INFO and up) into ``<run>/harness.log``, while it runs."""
    from harness.cluster.redaction import RedactCredentials

    handler = logging.FileHandler(run_dir / "harness.log")
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
    from harness.reporting.analysis import summarize

    s = summarize(record)
    return {k: float(v) for k, v in s.as_row().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path(cfg.results_dir) / ".cache").resolve()


def run(cfg: ExperimentConfig, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    preflight(cfg, ray_address, tracking=tracking)
    cfg = dataclasses.replace(cfg, results_dir=str(Path(cfg.results_dir).resolve()))
    run_dir = _run_dir(cfg)
    with _logging_to(run_dir):
        return _run(cfg, run_dir, ray_address, verbose, tracking, previous=None)


def resume(run_dir: str | Path, *, ray_address: str = "local", verbose: bool = False, tracking: bool = True) -> Outcome:
    """Continue a run whose driver died or stopped: the same folder, the same MLflow runs."""
    from harness.contract import events

    run_dir = Path(run_dir).resolve()
    if not (run_dir / events.EVENTS_FILE).is_file() or not (run_dir / "config.json").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r} is not a run folder of this harness (no {events.EVENTS_FILE} "
                          "and config.json); give a folder under results/")
    if events.finished(run_dir):
        raise ConfigError(f"--resume {str(run_dir)!r}: the run is complete, nothing to resume")
    cfg = ExperimentConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    previous = events.replay(run_dir)
    if tracking and not previous.mlflow_run_id:
        log.info("%s ran without MLflow (--no-mlflow); it continues without it", run_dir)
        tracking = False
    preflight(cfg, ray_address, tracking=tracking)
    if not strategies.spec(cfg.strategy).sequential:
        from ray.tune import Tuner

        if not Tuner.can_restore(str(run_dir / "ray")):
            raise ConfigError(f"--resume {str(run_dir)!r}: Ray Tune saved no experiment state in it before the driver "
                              "died; this run cannot be continued, start it again")
    with _logging_to(run_dir):
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
    open_trials = [t.trial_id for t in record.trials if t.status not in ("TERMINATED", "ERROR")]
    missing = (spec.planned_trials(cfg) - len(record.trials)) if spec.trials != strategies.TRIALS_UNTIL_SPENT else 0
    if stop.is_set():
        return "SIGUSR1 (a time limit)"
    if open_trials or missing > 0:  # Ray Tune stopped on SIGUSR1 (its own handler), or the driver failed
        return f"{len(open_trials)} trial(s) unfinished, {max(0, missing)} not started"
    return ""


def _run(cfg: ExperimentConfig, run_dir: Path, ray_address: str, verbose: bool, tracking: bool,
         previous: RunRecord | None) -> Outcome:
    from harness.contract import events
    from harness.trial.data import prepare
    from harness.trial.model import load_tokenizer, resolve_model_path
    from harness.cluster.provenance import provenance
    from harness.reporting.report import write_tables
    from harness.reporting.tracking import NoTracker, Tracker

    log_events = events.EventLog(run_dir)
    if previous is None:
        (run_dir / "config.json").write_text(cfg.to_json())
        log_events.write("run_started", strategy=cfg.strategy, preset=cfg.preset, seed=cfg.seed,
                         config=cfg.to_dict(), budget=cfg.budget_iterations())
        log.info("run folder: %s (full log: harness.log, trial processes: logs/)", run_dir)
    else:
        log_events.write("resumed", pid=os.getpid())
        done = sum(t.iterations for t in previous.trials)
        log.info("resuming %s: %d trial(s) known, %d iteration(s) done", run_dir, len(previous.trials), done)

    cache = cache_dir(cfg)
    model_path = resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache)
    data_path = prepare(cfg.data, load_tokenizer(model_path), seed=cfg.seed,
                        max_length=cfg.model.max_length, cache_dir=cache)
    log.info("model: %s; tokenized data: %s", model_path, data_path)
    spec = strategies.spec(cfg.strategy)
    strategy = strategies.get(cfg.strategy)
    stop = threading.Event()
    _stop_on_usr1(stop)

    continued = events.mlflow_runs(run_dir) if previous is not None else None
    tracker_cm = Tracker(cfg, run_dir, tags=provenance(), events=log_events, resume=continued) if tracking else NoTracker()
    with tracker_cm as tracker:
        if previous is None and tracker.parent_id:
            log_events.write("mlflow_parent", run_id=tracker.parent_id)
        progress = Progress(cfg, already=sum(t.iterations for t in previous.trials) if previous else 0)
        ctx = strategies.StrategyContext(cfg=cfg, run_dir=run_dir, model_path=model_path, data_path=str(data_path),
                                         cache_dir=str(cache), ray_address=ray_address,
                                         sinks=[log_events, tracker, progress], verbose=verbose,
                                         previous=previous, stop=stop)
        slots = 0
        try:
            slots = strategy(ctx).slots
        finally:
            stopped = _stopped(events.replay(run_dir), cfg, stop)
            log_events.write("run_finished", slots=slots or (previous.slots if previous else 0), stopped=stopped)
            record = events.replay(run_dir)
            record.save(run_dir)
        if stopped:
            tracker.stopped(stopped)
        text, tables_dir = write_tables(record, run_dir)
        artifacts_dir = run_dir / "strategy_artifacts"
        for pattern in spec.artifacts:
            for path in (run_dir / "ray").glob(pattern):
                artifacts_dir.mkdir(exist_ok=True)
                shutil.copy2(path, artifacts_dir / path.name)
        tracker.log_summary(summary_metrics(record),
                            [run_dir / "config.json", run_dir / "run_record.json", tables_dir, artifacts_dir])
    return Outcome(record=record, run_dir=run_dir, tables_markdown=text, cfg=cfg)
