"""MLflow tracking: one parent run per benchmark invocation, one child run per trial.

The only module that imports mlflow. Ray's ``MLflowLoggerCallback`` is not used: with default
settings it crashes ``Tuner.fit`` at the first PBT exploit ("Changing param values is not
allowed", ray#20473) and leaves a parent run RUNNING. Here a child run gets the trial's *initial*
hyperparameters as params (params are immutable in MLflow) and the *current* lr, batch size and
weight decay as metrics per iteration, so PBT's mutations are visible over time; exploits are
metrics and tags too. The parent run is created and ended by the harness.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from harness.config import ExperimentConfig  # noqa: E402
from harness.train import HPARAMS, PHASES, phase_key  # noqa: E402

log = logging.getLogger(__name__)

#: Metrics logged per iteration (step = the trial's own iteration count).
ITERATION_METRICS = (
    "eval_loss", "train_loss", *HPARAMS, "optimizer_lr", "optimizer_weight_decay", "epoch", "time_this_iter_s",
    *(phase_key(p) for p in PHASES),
)


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def tracking_uri(results_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite file beside the run folders."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results_dir)


def experiment_name(cfg: ExperimentConfig) -> str:
    return f"hpo-{Path(cfg.preset).stem}"


def _experiment_id(client: MlflowClient, name: str, results_dir: str | Path) -> str:
    """The experiment's id, creating it on first use with an explicit artifact location (the
    default is ./mlruns relative to the working directory) unless a tracking server decides."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (Path(results_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


class Tracker:
    """Sink for trial events that writes MLflow runs; use as a context manager around a run."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, tags: dict[str, str]):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        results_dir = Path(cfg.results_dir)
        self.uri = tracking_uri(results_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = _experiment_id(self.client, experiment_name(cfg), results_dir)
        self.tags = tags
        self.parent_id = ""
        self.children: dict[str, str] = {}

    # -- parent run ------------------------------------------------------------------------

    def __enter__(self) -> Tracker:
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.run_dir.name,
            tags={"strategy": self.cfg.strategy, "preset": self.cfg.preset, "seed": str(self.cfg.seed),
                  "run_dir": str(self.run_dir.resolve()), **self.tags},
        )
        self.parent_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.cfg.flat().items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_id, params=params[i:i + 100])
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        for trial_id, run_id in self.children.items():  # a child left RUNNING by an abort
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED" if status != "FINISHED" else "FINISHED")
        self.client.set_terminated(self.parent_id, status=status)

    def log_summary(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items() if v is not None and not math.isnan(v)],
        )
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.parent_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.parent_id, str(path))

    # -- sink interface ----------------------------------------------------------------------

    def trial_started(self, trial_id: str, name: str, config: dict[str, Any]) -> None:
        if trial_id in self.children:  # PBT restarts an exploited trial: same child run
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.parent_id, "trial_id": trial_id, "strategy": self.cfg.strategy},
        )
        self.children[trial_id] = run.info.run_id
        params = [Param(k, str(config[k])) for k in HPARAMS if k in config]
        self.client.log_batch(run.info.run_id, params=params + [Param("trial_id", trial_id)])

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        run_id = self.children[trial_id]
        step = int(result.get("iteration") or result.get("training_iteration") or 0)
        ts = _now_ms()
        metrics = [
            Metric(k, float(result[k]), ts, step)
            for k in ITERATION_METRICS
            if isinstance(result.get(k), (int, float))
        ]
        donor = result.get("exploited_from")
        metrics.append(Metric("exploited", 1.0 if donor else 0.0, ts, step))
        tags = []
        if donor:
            tags.append(RunTag(f"exploit.{step}", json.dumps({"donor": donor, "config": {k: result.get(k) for k in HPARAMS}})))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        if error:
            self.client.set_tag(run_id, "error", error[-5000:])
        self.client.set_terminated(run_id, status="FINISHED" if status == "TERMINATED" else "FAILED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def runs_of(experiment: str, uri: str) -> list[Any]:
    """All runs of an experiment (for tests and reports)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=10000)



def log_comparison(aggregates: list[Any], files: list[Path], *, results_dir: str | Path, experiment: str,
                   tags: dict[str, str]) -> str:
    """A comparison run (artifacts: report, CSV, plots) with one child summary run per strategy,
    so the MLflow UI can put the strategies side by side; returns the comparison run's id."""
    client = MlflowClient(tracking_uri=tracking_uri(results_dir))
    experiment_id = _experiment_id(client, experiment, results_dir)
    parent = client.create_run(experiment_id, run_name=f"comparison-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={"kind": "comparison", "strategies": ",".join(a.strategy for a in aggregates),
                                     **tags})
    pid = parent.info.run_id
    try:
        for a in aggregates:
            child = client.create_run(experiment_id, run_name=f"summary: {a.strategy}",
                                      tags={"mlflow.parentRunId": pid, "kind": "strategy-summary",
                                            "strategy": a.strategy, "seeds": " ".join(map(str, a.seeds)),
                                            "budget_comparable": str(a.comparable).lower(),
                                            "run_dirs": "\n".join(s.run_dir for s in a.runs)[:5000]})
            metrics = dict(a.medians)
            for key, est in a.estimates.items():
                metrics.update({key: est.median, f"{key}_ci_low": est.low, f"{key}_ci_high": est.high})
            ts = _now_ms()
            client.log_batch(child.info.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()
                                                         if v is not None and not math.isnan(float(v))])
            client.set_terminated(child.info.run_id)
        for path in files:
            client.log_artifact(pid, str(path))
    except BaseException:
        client.set_terminated(pid, status="FAILED")
        raise
    client.set_terminated(pid)
    return pid
