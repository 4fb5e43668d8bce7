"""One benchmark invocation: config -> prepared inputs -> strategy -> record -> tables + MLflow."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness import strategies
from harness.capacity import CapacityError, Node, TrialShape, plan
from harness.config import ConfigError, ExperimentConfig
from harness.records import RunRecord, short_id

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    record: RunRecord
    run_dir: Path
    tables_markdown: str

    @property
    def failed_trials(self) -> list[str]:
        return [t.name for t in self.record.trials if t.status != "TERMINATED"]


def preflight(cfg: ExperimentConfig, ray_address: str = "local") -> None:
    """Refuse, before anything starts, what cannot run here; each message names the fix."""
    strategy = strategies.spec(cfg.strategy)
    if strategy.exploits and strategy.planned_trials(cfg) < 2:
        raise ConfigError(
            f"budget.trial_iterations={cfg.budget_iterations()} gives {cfg.strategy} a population of "
            f"{strategy.planned_trials(cfg)} (budget / train.iterations={cfg.train.iterations}); a population "
            f"needs at least 2 trials to exploit: raise the budget to {2 * cfg.train.iterations} or more"
        )
    src = cfg.data.source
    if src != "synthetic" and not src.startswith("hub:") and not Path(src).is_file():
        from harness.prepare import dataset_complete, dataset_slot

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

    def __init__(self, cfg: ExperimentConfig):
        self.metric, self.mode = cfg.tune.metric, cfg.tune.mode
        self.budget, self.planned = cfg.budget_iterations(), cfg.train.iterations
        self.spent = 0
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

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        if status != "TERMINATED":
            last = error.strip().splitlines()[-1] if error.strip() else "no error message"
            self.log.warning("%s ended %s: %s", short_id(trial_id), status, last)


def _log_to(run_dir: Path) -> logging.Handler:
    """Every log line of the run (all libraries, INFO and up) into ``<run>/harness.log``."""
    from harness.redaction import RedactCredentials

    handler = logging.FileHandler(run_dir / "harness.log")
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def summary_metrics(record: RunRecord) -> dict[str, float]:
    """The run's headline figures for its MLflow parent run (from the same analysis as the report)."""
    from harness.analysis import summarize

    s = summarize(record)
    return {k: float(v) for k, v in s.as_row().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path(cfg.results_dir) / ".cache").resolve()


def run(cfg: ExperimentConfig, *, ray_address: str = "local", verbose: bool = False) -> Outcome:
    preflight(cfg, ray_address)
    cfg = dataclasses.replace(cfg, results_dir=str(Path(cfg.results_dir).resolve()))
    run_dir = _run_dir(cfg)
    handler = _log_to(run_dir)
    try:
        return _run(cfg, run_dir, ray_address, verbose)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run(cfg: ExperimentConfig, run_dir: Path, ray_address: str, verbose: bool) -> Outcome:
    from harness.data import prepare
    from harness.model import load_tokenizer, resolve_model_path
    from harness.provenance import provenance
    from harness.report import write_tables
    from harness.tracking import Tracker

    (run_dir / "config.json").write_text(cfg.to_json())
    record = RunRecord(strategy=cfg.strategy, preset=cfg.preset, seed=cfg.seed, config=cfg.to_dict(),
                       started_at=time.time(), budget_trial_iterations=cfg.budget_iterations())
    log.info("run folder: %s (full log: harness.log, trial processes: logs/)", run_dir)

    cache = cache_dir(cfg)
    model_path = resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache)
    data_path = prepare(cfg.data, load_tokenizer(model_path), seed=cfg.seed,
                        max_length=cfg.model.max_length, cache_dir=cache)
    log.info("model: %s; tokenized data: %s", model_path, data_path)
    spec = strategies.spec(cfg.strategy)
    strategy = strategies.get(cfg.strategy)

    with Tracker(cfg, run_dir, tags=provenance()) as tracker:
        record.mlflow_run_id = tracker.parent_id
        ctx = strategies.StrategyContext(cfg=cfg, run_dir=run_dir, model_path=model_path, data_path=str(data_path),
                                         cache_dir=str(cache), ray_address=ray_address,
                                         sinks=[record, tracker, Progress(cfg)], verbose=verbose)
        try:
            record.slots = strategy(ctx).slots
        finally:
            record.finished_at = time.time()
            record.save(run_dir)
        text, tables_dir = write_tables(record, run_dir)
        artifacts_dir = run_dir / "strategy_artifacts"
        for pattern in spec.artifacts:
            for path in (run_dir / "ray").glob(pattern):
                artifacts_dir.mkdir(exist_ok=True)
                shutil.copy2(path, artifacts_dir / path.name)
        tracker.log_summary(summary_metrics(record),
                            [run_dir / "config.json", run_dir / "run_record.json", tables_dir, artifacts_dir])
    return Outcome(record=record, run_dir=run_dir, tables_markdown=text)
