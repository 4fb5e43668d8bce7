"""The one pre-flight: what cannot run is refused before anything starts, in one line that names
the fix. ``run`` and ``--resume`` check everything; the SLURM head job's ``job-plan`` (and
``make submit-*`` on the login node) check all but what depends on the machine they run on."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from harness import strategies, tasks
from harness.cluster.capacity import CapacityError, Node, TrialShape, plan
from harness.cluster.devices import cuda_devices
from harness.cluster.reachability import tracking_problem
from harness.config import ConfigError, ExperimentConfig
from harness.trial import cache

log = logging.getLogger(__name__)


def preflight(cfg: ExperimentConfig, *, here: bool, tracking: bool) -> None:
    """Refuse what cannot run; ``here``: the run starts on this machine (its GPUs and CPUs decide),
    rather than on a cluster that Ray or SLURM will size."""
    strategy = strategies.spec(cfg.strategy)
    task = tasks.get(cfg.task)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking and uri:
        problem = tracking_problem(uri)
        if problem:
            raise ConfigError(f"{problem}; start it, unset MLFLOW_TRACKING_URI for the local sqlite store, or run "
                              "without MLflow: --no-mlflow (HARNESS_ARGS=--no-mlflow for make and the SLURM jobs; "
                              "the run folder keeps every record)")
    if strategy.exploits and strategy.planned_trials(cfg) < 2:
        raise ConfigError(
            f"budget.trial_iterations={cfg.budget_iterations()} gives {cfg.strategy} a population of "
            f"{strategy.planned_trials(cfg)} (budget / train.iterations={cfg.train.iterations}); a population "
            f"needs at least 2 trials to exploit: raise the budget to {2 * cfg.train.iterations} or more"
        )
    src = cfg.data.source
    where = cache.root(cfg.results_dir)
    if task.needs_model and src != "synthetic" and not src.startswith("hub:") and not Path(src).is_file():
        if not cache.dataset_complete(cache.dataset_slot(where, src)):
            raise ConfigError(f"data.source={src!r} is not a file (nor in the prepared cache {where}); "
                              "give a SQuAD JSON file, synthetic or hub:<namespace>/<name>")
    if cfg.train.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "train.deepspeed=true needs the deepspeed package, which is not installed; "
            "install it (DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed) or use --set train.deepspeed=false"
        )
    # a task that trains no model uses no GPU, and asking torch for the GPUs would import it
    capacity = _fits_this_machine(cfg, strategy.planned_trials(cfg), cuda_devices() if task.needs_model else 0) \
        if here else ""
    absent = cache.missing(cfg) if task.needs_model else []
    if absent:
        raise ConfigError(f"the prepared cache {where} has no {' and no '.join(absent)}, and runs read the hub only "
                          f"through it; fill it where there is network: {cache.prepare_command(cfg)}")
    if capacity:  # said once everything passed: a refused run prints its one line only
        log.info("capacity: %s", capacity)


def _fits_this_machine(cfg: ExperimentConfig, trials: int, gpus: int) -> str:
    """A run that starts here: its precision needs a GPU, and one trial must fit this machine
    (returns how many trials fit at once)."""
    if cfg.train.fp16 and gpus == 0:
        raise ConfigError(
            "train.fp16=true needs a CUDA GPU and this machine has none; "
            "use --set train.fp16=false (or the smoke preset) on CPU"
        )
    r = cfg.resources
    shape = TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker)
    try:
        return plan([Node(cpus=os.cpu_count() or 1, gpus=gpus)], shape, trials).summary()
    except CapacityError as exc:
        raise CapacityError(f"on this machine {exc}") from None
