"""Where Ray Tune meets the harness, both ways.

* :func:`trainable`, Ray Tune's function trainable: the trial's hyperparameters and checkpoint
  from Tune in, one training segment (:mod:`harness.trial.ranks`), each iteration's report and
  checkpoint back to Tune.
* :class:`SinkCallback`, a Tune callback: Tune's trial events out to the run's sinks (the event
  log, MLflow, the console), each result typed once, here.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from harness.cluster import stop
from harness.config import ExperimentConfig
from harness.contract.iteration import HParams, Iteration, IterationReport
from harness.contract.record import Status
from harness.contract.sink import Sink
from harness.trial import process

log = logging.getLogger(__name__)


def _report(report: IterationReport, ckpt_dir: str) -> None:
    tune.report(report.metrics(), checkpoint=tune.Checkpoint.from_directory(ckpt_dir))


def trainable(config: dict[str, Any], *, cfg: ExperimentConfig, model_path: str, data_path: str,
              cache_dir: str = "") -> None:
    """Ray Tune function trainable (bind the keyword arguments with ``tune.with_parameters``)."""
    process_up = process.started_here()
    importing = time.time()
    # The task's trial body (the LM task: transformers' Trainer, 5 s to import) is imported here, in
    # the trial process, and counted as the segment's imports: the driver hands Ray only this function.
    from harness import tasks
    from harness.trial.checkpoint import Segment, restart_point

    run_trial_segment = tasks.get(cfg.task).load()

    imports = time.time() - importing

    trial_id = tune.get_context().get_trial_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"harness-{trial_id}-"))
    # PB2 proposes continuous batch sizes; explored values stay inside the user's space
    hparams = HParams.of(cfg.search.clip(HParams.of(config).as_dict()))
    try:
        restoring = time.time()
        start: dict[str, Any] = {}
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = restart_point(Path(d), workdir / "init", trial_id)
            if start["exploited_from"]:
                log.info("%s: exploiting %s at iteration %d with %s", trial_id, start["exploited_from"],
                         start["start_iteration"], hparams)
        seg = Segment(cfg=cfg, hparams=hparams, model_path=model_path, data_path=data_path, trial_id=trial_id,
                      workdir=str(workdir), cache_dir=cache_dir,
                      setup_phases={"process_up": process_up, "imports": imports, "restore": time.time() - restoring},
                      **start)
        run_trial_segment(seg, _report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class SinkCallback(Callback):
    """Forwards Ray Tune's trial events to the run's sinks, each result turned into the typed
    :class:`~harness.contract.iteration.Iteration` once, here.

    Ray Tune pickles its callbacks into the experiment's saved state, and ``Tuner.restore`` brings
    them back in a new driver. So the callback holds only its experiment folder and finds the live
    sinks of the driver it runs in through :attr:`live`, registered before ``fit``.
    """

    live: dict[str, Sink] = {}

    def __init__(self, experiment: str):
        self.experiment = experiment

    @property
    def sinks(self) -> Sink:
        if self.experiment not in self.live and len(self.live) == 1:  # restored from a moved run folder
            return next(iter(self.live.values()))
        return self.live[self.experiment]

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # inside Tuner.fit Ray Tune's own SIGUSR1 handler is in place: a stop requested while Ray
        # and the Tuner were being set up (the harness's handler took it) is handed on to it
        stop.forward_to_tune()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sinks.trial_started(trial.trial_id, str(trial), HParams.of(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.sinks.trial_result(trial.trial_id, Iteration.from_metrics(result, received_at=time.time()))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sinks.trial_ended(trial.trial_id, Status.TERMINATED)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sinks.trial_retried(trial.trial_id, _error_of(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sinks.trial_ended(trial.trial_id, Status.ERROR, _error_of(trial))


def _error_of(trial: Any) -> str:
    error_file = getattr(trial, "error_file", None)
    return Path(error_file).read_text()[-2000:] if error_file and Path(error_file).is_file() else ""
