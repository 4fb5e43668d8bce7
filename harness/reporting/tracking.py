"""MLflow tracking: one parent run per benchmark invocation, one child run per trial.

The only module that imports mlflow. Ray's ``MLflowLoggerCallback`` is not used: with default
settings it crashes ``Tuner.fit`` at the first PBT exploit ("Changing param values is not
allowed", ray#20473) and leaves a parent run RUNNING. Here a child run gets the trial's *initial*
hyperparameters as params (params are immutable in MLflow) and the *current* lr, batch size and
weight decay as metrics per iteration, so PBT's mutations are visible over time; exploits are
metrics and tags too. The trial's own use of its CPUs, memory and GPUs is logged per iteration
under ``system/trial_*`` (:meth:`~harness.contract.iteration.Iteration.system_metrics`): the
"System metrics" tab of a child run shows it. The parent run is created and ended by the harness.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.cluster.redaction import redact

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
# A tracking server that stops answering mid-run costs one failed request, not minutes of urllib3
# retries with the Tune controller (and so every trial) waiting: events are spooled instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
if redact(os.environ.get("MLFLOW_TRACKING_URI", "")) != os.environ.get("MLFLOW_TRACKING_URI", ""):
    # MLflow writes "View run ... at: <the URI, password included>" to stdout, past any log filter
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

import requests  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from harness.config import ExperimentConfig  # noqa: E402
from harness.contract.events import append_line  # noqa: E402
from harness.contract.iteration import HPARAMS, HParams, Iteration  # noqa: E402
from harness.contract.record import RunRecord, Status, short_id  # noqa: E402
from harness.contract.rundir import RunDir  # noqa: E402
from harness.contract.sink import Sink  # noqa: E402

log = logging.getLogger(__name__)

#: Medians logged on a comparison's strategy-summary runs, beside best_eval_loss (with its
#: interval), wall_s and sum_runtime_s.
SUMMARY_MEDIANS = ("budget_trial_iterations", "iterations_run", "sum_over_wall", "slot_utilization", "cpu_utilization",
                   "gpu_utilization", "overhead_ratio")

#: The runs-table columns that answer the question, as a view MLflow 3.15+ opens from a URL: the
#: UI reads a shared view's state from the experiment tag ``mlflow.sharedViewState.<key>`` (plain
#: JSON is accepted) when the page has ``?viewStateShareKey=<key>``.
RUNS_VIEW_KEY = "harness-runs"
RUNS_VIEW_COLUMNS = (
    "tags.`strategy`", "tags.`preset`", "tags.`seed`", "metrics.`best_eval_loss`", "metrics.`eval_loss`",
    "metrics.`wall_s`", "metrics.`sum_runtime_s`", "metrics.`slot_utilization`", "metrics.`budget_trial_iterations`",
    "metrics.`iterations_run`",
)

#: MLflow shows this tag as a run's description.
DESCRIPTION = "mlflow.note.content"

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
    experiment_id = client.create_experiment(name, artifact_location=location)
    state = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
             "selectedColumns": list(RUNS_VIEW_COLUMNS), "runsExpanded": {}}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", json.dumps(state))
    return experiment_id


#: What MlflowClient raises when the tracking server fails a call.
UNREACHABLE = (MlflowException, requests.RequestException, OSError)
#: MlflowException codes of a server that is down, restarting or overloaded (a connection MLflow could
#: not make comes as INTERNAL_ERROR too): worth spooling and sending again. Any other code (a run that
#: does not exist on this server, a deleted experiment, a bad value) would fail the same way forever.
TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED")


def outage(exc: BaseException) -> bool:
    """Is this the tracking server failing for now (spool and retry), rather than refusing the call?"""
    return not isinstance(exc, MlflowException) or getattr(exc, "error_code", "INTERNAL_ERROR") in TRANSIENT_CODES
#: Seconds between attempts to reach a tracking server that stopped answering.
RETRY_S = 5.0


def spooled(method: Callable[..., None]) -> Callable[..., None]:
    """Tracking never stops training: a call the server does not take is appended, with its
    arguments, to ``<run>/mlflow_spool.jsonl``, and every spooled call is replayed in order as soon
    as the server answers again (tried at most every RETRY_S seconds), or by ``harness sync``."""

    @functools.wraps(method)
    def guarded(self: Tracker, *args: Any) -> None:
        if self.pending() and not self.flush():
            self.spool(method.__name__, args)
            return
        try:
            method(self, *args)
        except UNREACHABLE as exc:  # the tracking server failed: keep the event, train on
            if not outage(exc):
                self.refused(method.__name__, exc)
                return
            self.went_offline(exc)
            self.spool(method.__name__, args)

    guarded.raw = method  # type: ignore[attr-defined]
    return guarded


class Tracker(Sink):
    """Sink for trial events that writes MLflow runs; use as a context manager around a run."""

    def __init__(self, cfg: ExperimentConfig, run_dir: RunDir, tags: dict[str, str], *,
                 events: Any = None, previous: RunRecord | None = None, resumed: bool = False):
        """``events``: the run's event log, told the parent's and every child run's id; ``previous``:
        the record of an earlier driver of this run, whose parent and child runs are continued, not
        recreated; ``resumed``: this driver is a ``--resume`` (counted in the parent's ``resumes`` tag).
        Nothing here talks to the server: that starts with ``with``, spooled like the rest."""
        self.events = events
        self.stop_reason = ""
        self.spool_path = run_dir.spool_file
        self.last_attempt = 0.0
        self.replaying = False
        self.cfg = cfg
        self.run_dir = run_dir
        self.uri = tracking_uri(Path(cfg.results_dir))
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = ""
        self.tags = tags
        self.parent_id = previous.mlflow_run_id if previous else ""
        self.resuming = resumed  # this driver continues the run (--resume): the parent's resumes tag counts it
        self.token = secrets.token_hex(6)
        self.children: dict[str, str] = dict(previous.mlflow_children) if previous else {}
        #: children of trials a resume discarded (no Ray Tune state): child run id -> iterations it logged
        self.discarded = {self.children.pop(t.trial_id): t.rows_run for t in (previous.discarded if previous else [])
                          if t.trial_id in self.children}
        #: MLflow steps per trial: the iterations it has trained, reruns included, so each step has one value
        self.steps: dict[str, int] = {t.trial_id: t.rows_run for t in previous.trials} if previous else {}
        #: what earlier drivers received, in order: step n of a trial is its n-th row (see _catch_up)
        self.earlier = {t.trial_id: t.all_rows for t in previous.trials} if previous else {}

    # -- parent run ------------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        return f"{self.cfg.strategy} · {Path(self.cfg.preset).stem} · seed {self.cfg.seed} · {time.strftime('%Y-%m-%d %H:%M')}"

    def description(self) -> str:
        cfg = self.cfg
        return (f"One `{cfg.strategy}` run of the `{Path(cfg.preset).stem}` preset, seed {cfg.seed}: a budget of "
                f"{cfg.budget_iterations()} trial-iterations of {cfg.train.iterations} per trial. Child runs are its "
                f"trials (c01, c02, ...), each with its own CPU/GPU use under System metrics; metrics here are "
                f"the run's totals (wall_s, sum_runtime_s, slot_utilization, cpu_utilization, best_eval_loss, ...). "
                f"Run folder: {self.run_dir}")

    def __enter__(self) -> Tracker:
        self._open(self.token)
        return self

    @spooled
    def _open(self, token: str) -> None:
        """The run's parent: continued when an earlier driver (or a spooled call) made it, else created.
        A parent the server made before its answer was lost is found by its ``run_dir`` tag. ``token``
        tells this driver's own call from an earlier driver's, replayed from the spool: only its own
        counts the resume and catches up, once everything spooled before it has been sent."""
        mine = token == self.token
        if not self.experiment_id:
            self.experiment_id = _experiment_id(self.client, experiment_name(self.cfg), self.cfg.results_dir)
        if not self.parent_id:
            found = self.client.search_runs(
                [self.experiment_id], f"tags.run_dir = '{self.run_dir}' and tags.kind = 'run'", max_results=1)
            if found:
                self._parent_made(found[0].info.run_id)
                if not found[0].data.params:  # the creation's answer was lost before the params were sent
                    self._log_params()
        if not self.parent_id:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.run_name,
                tags={"strategy": self.cfg.strategy, "preset": self.cfg.preset, "seed": str(self.cfg.seed),
                      DESCRIPTION: self.description(), "kind": "run",
                      "run_dir": str(self.run_dir), **self.tags},
            )
            self._parent_made(run.info.run_id)
            self._log_params()
        elif self.client.get_run(self.parent_id).info.status != "RUNNING":
            self.client.update_run(self.parent_id, status="RUNNING")
        self._discard_children()
        if not mine:
            return
        if self.resuming:  # the parent's resumes tag counts each resumed driver once
            resumes = int(self.client.get_run(self.parent_id).data.tags.get("resumes", "0")) + 1
            self.client.set_tag(self.parent_id, "resumes", str(resumes))
        self._catch_up()

    def _catch_up(self) -> None:
        """Results an earlier driver wrote to the event log but did not live to send (killed between
        the two): sent now, at their own steps. The event log is written first, so MLflow can only
        be behind it."""
        for trial_id, rows in self.earlier.items():
            run_id = self.children.get(trial_id)
            if run_id is None or not rows:
                continue
            logged = {m.step for m in self.client.get_metric_history(run_id, "iteration")}
            for step, row in enumerate(rows, 1):
                if step not in logged:
                    type(self)._log_result.raw(self, trial_id, row.to_dict(), int((row.received_at or time.time()) * 1000),
                                               step)
        self.earlier = {}

    def _log_params(self) -> None:
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.cfg.flat().items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_id, params=params[i:i + 100])

    def _parent_made(self, run_id: str) -> None:
        self.parent_id = run_id
        if self.events is not None:
            self.events.write("mlflow_parent", run_id=run_id)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        if exc_type is None and self.stop_reason:  # stopped before a time limit: --resume continues these runs
            status = "KILLED"
        self.terminate(status)
        if self.pending() and not self.flush(force=True):
            log.warning("MLflow (%s) did not answer: %d event(s) kept in %s; `python -m harness sync %s` sends them "
                        "when it is back", redact(self.uri), self.pending(), self.spool_path, self.run_dir)

    @spooled
    def terminate(self, status: str) -> None:
        for run_id in self.children.values():  # a child left RUNNING by an abort
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED" if status != "FINISHED" else "FINISHED")
        self.client.set_terminated(self.parent_id, status=status)

    # -- the spool: events the server did not take ------------------------------------------

    def pending(self) -> int:
        if not self.spool_path.is_file():
            return 0
        return sum(1 for line in self.spool_path.read_text().splitlines() if line.strip())

    def spool(self, name: str, args: tuple[Any, ...]) -> None:
        append_line(self.spool_path, json.dumps({"call": name, "args": list(args)}, default=str))

    def went_offline(self, exc: Exception) -> None:
        self.last_attempt = time.monotonic()
        if not self.pending():
            log.warning("MLflow (%s) stopped answering (%s: %s); spooling its events to %s, training goes on",
                        redact(self.uri), type(exc).__name__, redact(str(exc).splitlines()[0] if str(exc) else ""),
                        self.spool_path)

    def refused(self, call: str, exc: BaseException) -> None:
        """The server answered and refused the call: sending it again would fail the same way. Said
        once, the call dropped; training goes on and the run folder keeps the record."""
        log.error("MLflow (%s) refused %s (%s: %s); the run goes on, its folder keeps the record", redact(self.uri),
                  call.lstrip("_"), getattr(exc, "error_code", type(exc).__name__),
                  redact(str(exc).splitlines()[0] if str(exc) else ""))

    def flush(self, force: bool = False) -> bool:
        """Replay the spool in order; True when it is empty afterwards. At most every RETRY_S
        seconds unless ``force``; a call that fails again stops the replay where it is (one the
        server refuses is dropped, see :meth:`refused`). A line cut off by a kill is skipped: the
        event log has the event, and sync or the run's end sends what follows."""
        if not force and time.monotonic() - self.last_attempt < RETRY_S:
            return False
        self.last_attempt = time.monotonic()
        lines = [line for line in self.spool_path.read_text().splitlines() if line.strip()]
        done = 0
        self.replaying = True
        try:
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("skipped a line of %s cut off by a kill: %.80s", self.spool_path.name, line)
                    done += 1
                    continue
                try:
                    getattr(type(self), entry["call"]).raw(self, *entry["args"])
                except UNREACHABLE as exc:
                    if outage(exc):
                        raise
                    self.refused(entry["call"], exc)
                done += 1
        except UNREACHABLE:  # still down: keep what is left, try later
            return False
        finally:
            self.replaying = False
            rest = lines[done:]
            self.spool_path.write_text("".join(f"{line}\n" for line in rest))
            if done:
                log.info("MLflow answers again: %d spooled event(s) sent, %d left", done, len(rest))
        return True

    @spooled
    def log_summary(self, metrics: dict[str, float], artifacts: list[Path | str]) -> None:
        artifacts = [Path(a) for a in artifacts]
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

    def stopped(self, reason: str) -> None:
        self.stop_reason = reason
        self._tag_stopped(reason)

    @spooled
    def _tag_stopped(self, reason: str) -> None:
        self.client.set_tag(self.parent_id, "stopped", reason)

    def trial_started(self, trial_id: str, name: str, hparams: HParams) -> None:
        self._start_trial(trial_id, name, hparams.as_dict())

    @spooled
    def _start_trial(self, trial_id: str, name: str, config: dict[str, Any]) -> None:
        if not self.experiment_id:
            self.experiment_id = _experiment_id(self.client, experiment_name(self.cfg), self.cfg.results_dir)
        if trial_id not in self.children and (self.replaying or self.resuming):
            # the server may have made it before its answer was lost, or an earlier driver did and was killed
            # before its event log learnt the id: one child per trial all the same
            found = self.client.search_runs(
                [self.experiment_id], f"tags.trial_id = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'")
            if found:
                self.children[trial_id] = found[0].info.run_id
                if self.events is not None:
                    self.events.mlflow_child(trial_id, found[0].info.run_id)
        if trial_id in self.children:  # PBT restarts an exploited trial, a resume a stopped one: same child run
            run_id = self.children[trial_id]
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return
        hp = ", ".join(f"{k}={config[k]:g}" if isinstance(config.get(k), float) else f"{k}={config.get(k)}"
                       for k in HPARAMS if k in config)
        run = self.client.create_run(
            self.experiment_id,
            run_name=short_id(trial_id),
            tags={"mlflow.parentRunId": self.parent_id, "trial_id": trial_id, "ray_trial_id": trial_id,
                  "strategy": self.cfg.strategy,
                  DESCRIPTION: f"Trial {short_id(trial_id)} ({name}) of the {self.cfg.strategy} run "
                               f"'{self.run_name}', started with {hp}. Per-iteration metrics: eval_loss, train_loss, "
                               "the current lr / batch size / weight decay (PBT mutates them) and where the time "
                               "went (phase_*_s)."},
        )
        self.children[trial_id] = run.info.run_id
        if self.events is not None:
            self.events.mlflow_child(trial_id, run.info.run_id)
        params = [Param(k, str(config[k])) for k in HPARAMS if k in config]
        self.client.log_batch(run.info.run_id, params=params + [Param("trial_id", trial_id)])

    def trial_result(self, trial_id: str, row: Iteration) -> None:
        # the time and step of the result, kept in the spool: a replay logs the same point, and can see it is there.
        # The step counts the trial's trained iterations, so an iteration run twice is two steps (the
        # iteration itself is the metric "iteration"): one value per step.
        self.steps[trial_id] = self.steps.get(trial_id, 0) + 1
        self._log_result(trial_id, row.to_dict(), _now_ms(), self.steps[trial_id])

    @spooled
    def _log_result(self, trial_id: str, result: dict[str, Any], ts: int, step: int) -> None:
        row = Iteration.from_metrics(result)
        run_id = self.children.get(trial_id)
        if run_id is None:  # a trial a resume discarded (its child is settled in _open), or one never made
            return
        if self.replaying and any(m.step == step and m.timestamp == ts
                                  for m in self.client.get_metric_history(run_id, "exploited")):
            return  # the server took it before the connection failed
        metrics = [Metric(k, v, ts, step) for k, v in row.logged_metrics().items()]
        metrics.append(Metric("exploited", 1.0 if row.exploited_from else 0.0, ts, step))
        tags = []
        if row.exploited_from:
            tags.append(RunTag(f"exploit.{step}", json.dumps({"donor": row.exploited_from, "config": row.hparams.as_dict()})))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _discard_children(self) -> None:
        """Children of trials a resume started over (Ray Tune had saved no state): one that logged
        nothing is deleted, one that did is ended KILLED with a ``discarded`` tag (its iterations were
        trained). Each resume looks again, so one interrupted half-way is finished by the next."""
        for run_id, rows in self.discarded.items():
            run = self.client.get_run(run_id)
            if run.info.lifecycle_stage == "deleted" or "discarded" in run.data.tags:
                continue
            if rows:
                self.client.set_tag(run_id, "discarded", "the driver died before Ray Tune saved its state; its work "
                                                         "was done again as a new trial")
                self.client.set_terminated(run_id, status="KILLED")
            else:
                self.client.delete_run(run_id)

    @spooled
    def trial_retried(self, trial_id: str, error: str) -> None:
        run_id = self.children.get(trial_id)
        if run_id is not None:
            retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
            self.client.set_tag(run_id, "retries", str(retries))
            self.client.set_tag(run_id, f"retry.{retries}.error", error[-2000:])

    @spooled
    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        if error:
            self.client.set_tag(run_id, "error", error[-5000:])
        self.client.set_terminated(run_id, status="FINISHED" if status == Status.TERMINATED else "FAILED")


class NoTracker(Sink):
    """``--no-mlflow``: the same interface, nothing written (the run folder keeps every record)."""

    parent_id = ""

    def __enter__(self) -> NoTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def log_summary(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        return None

    def stopped(self, reason: str) -> None:
        return None


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
    seeds = sorted({seed for a in aggregates for seed in a.seeds})
    parent = client.create_run(
        experiment_id, run_name=f"comparison · seeds {' '.join(map(str, seeds))} · {time.strftime('%Y-%m-%d %H:%M')}",
        tags={"kind": "comparison", "strategies": ",".join(a.strategy for a in aggregates), **tags,
              DESCRIPTION: f"Comparison of {', '.join(a.strategy for a in aggregates)} over seeds "
                           f"{' '.join(map(str, seeds))}. Each child run is one strategy's medians across seeds "
                           "(with _ci_low/_ci_high: a 95% bootstrap interval from 5 seeds, the range below, as the "
                           "interval tag says); select them all and press Compare, or open "
                           "the compare URL that `make compare` prints. Artifacts: comparison.md, CSV, plots."})
    pid = parent.info.run_id
    try:
        for a in aggregates:
            child = client.create_run(experiment_id, run_name=f"{a.strategy} (seeds {' '.join(map(str, a.seeds))})",
                                      tags={**tags, "mlflow.parentRunId": pid, "kind": "strategy-summary",
                                            DESCRIPTION: f"{a.strategy}: medians across seeds "
                                                         f"{' '.join(map(str, a.seeds))} of the runs listed in "
                                                         "the run_dirs tag; budget "
                                                         + ("comparable" if a.comparable else "NOT comparable"),
                                            "strategy": a.strategy, "seeds": " ".join(map(str, a.seeds)),
                                            "budget_comparable": str(a.comparable).lower(),
                                            "interval": a.estimates["best_eval_loss"].kind,
                                            "run_dirs": "\n".join(s.run_dir for s in a.runs)[:5000]})
            # only what answers the question, so the compare view shows it without scrolling far;
            # every other figure is in the comparison run's comparison.csv
            metrics = {key: a.medians[key] for key in SUMMARY_MEDIANS}
            for key, est in a.estimates.items():
                metrics[key] = est.median
            est = a.estimates["best_eval_loss"]
            metrics.update(best_eval_loss_ci_low=est.low, best_eval_loss_ci_high=est.high)
            metrics["mean_rank"] = a.mean_rank
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


def ui_urls(results_dir: str | Path, port: int, host: str = "127.0.0.1") -> list[tuple[str, str]]:
    """(what, URL) for every experiment's runs table and for the compare view of its newest
    comparison's strategy summaries (the MLflow 3.17 routes that land on runs, not on the GenAI
    overview page)."""
    client = MlflowClient(tracking_uri=tracking_uri(results_dir))
    base = f"http://{host}:{port}/#"
    out = []
    for exp in client.search_experiments():
        if not client.search_runs([exp.experiment_id], max_results=1):
            continue  # MLflow's empty Default experiment
        runs = client.search_runs([exp.experiment_id], "tags.kind = 'comparison'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        view = f"?viewStateShareKey={RUNS_VIEW_KEY}" if f"mlflow.sharedViewState.{RUNS_VIEW_KEY}" in exp.tags else ""
        out.append((f"{exp.name}: training runs", f"{base}/experiments/{exp.experiment_id}/runs{view}"))
        if runs:
            children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'")
            ids = json.dumps([r.info.run_id for r in sorted(children, key=lambda r: r.info.start_time)])
            query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([exp.experiment_id])})
            out.append((f"{exp.name}: the strategies side by side ({runs[0].info.run_name})",
                        f"{base}/compare-runs?{query}"))
    return out


def ui_lines(results_dir: str | Path, port: int) -> list[str]:
    """What ``make mlflow-ui`` and ``make compare`` print: where to look in the UI."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return [f"MLflow: {redact(tracking_uri(results_dir))} (open its UI to see the runs)"]
    lines = [f"In the MLflow UI (make mlflow-ui, port {port}):"]
    for what, url in ui_urls(results_dir, port):
        lines.append(f"  {what}:\n    {url}")
    return lines
