"""One iteration of one trial, as every stage sees it.

The trainer produces an :class:`IterationReport` after each evaluation; Ray Tune (or the manual
grid) carries it to the driver as a flat dict of metrics (:meth:`IterationReport.metrics`); the
driver turns what arrives into an :class:`Iteration` (the report plus what the scheduler adds:
Ray's iteration counter and clock, the node, the arrival time), and every sink (the run record,
MLflow, the console) consumes that. The names of the hyperparameters, the metrics and the
phases are spelled here, once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HParams:
    """What the strategies search over and PBT mutates; the field names are Ray's config keys."""

    lr: float
    per_device_train_batch_size: int
    weight_decay: float

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> HParams:
        """The hyperparameters in a Ray config or a row (other keys are ignored)."""
        return cls(**{name: config[name] for name in HPARAMS})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The hyperparameters' names, in one fixed order.
HPARAMS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HParams))

#: Where a trial segment's time goes, recorded per iteration. The first iteration of a segment
#: carries the set-up phases (process start up to the trial function, the imports, restoring a
#: checkpoint, loading model and data, building the Trainer); every iteration carries train, eval,
#: checkpoint save, and the previous iteration's report (Ray counts a report's cost in the next
#: iteration's ``time_this_iter_s``). ``process_up`` lies before Ray's clock starts; the others add
#: up to ``time_this_iter_s`` up to a few milliseconds.
SETUP_PHASES = ("process_up", "imports", "restore", "model_load", "data_load", "setup")
ITERATION_PHASES = ("train", "eval", "checkpoint", "report")
PHASES = SETUP_PHASES + ITERATION_PHASES
#: The phases that are the work itself; everything else is overhead.
PURE_PHASES = ("train", "eval")

#: Reported values a strategy may optimize (``tune.metric``).
METRICS = ("eval_loss", "train_loss")

#: The prefix MLflow's UI groups under "System metrics" (MLflow's own ``log_system_metrics`` uses it).
SYSTEM_PREFIX = "system/"
_MIB_IN_MB = 2**20 / 1e6


def checkpoint_name(trial_id: str, iteration: int) -> str:
    """How :attr:`IterationReport.started_from` names a checkpoint: ``<trial id>@<iteration>``
    (``base``: the base model, before any iteration)."""
    return f"{trial_id}@{iteration}" if iteration else "base"


def phase_key(phase: str) -> str:
    """The flat name of a phase's seconds, as Ray Tune and MLflow carry it: ``phase_train_s``."""
    return f"phase_{phase}_s"


_PHASE_KEYS = {phase_key(p): p for p in PHASES}


@dataclass(frozen=True)
class IterationReport:
    """What rank 0 of a trial segment reports after one evaluation and checkpoint.

    Every field has a default, so a record written by an older harness (which kept fewer
    of them) still loads.
    """

    iteration: int = 0
    """The trial's iterations behind this checkpoint (the trainer's own count, across segments)."""
    planned_iterations: int = 0
    eval_loss: float | None = None
    train_loss: float | None = None
    epoch: float | None = None
    """Epochs of training behind this checkpoint (fractional when iterating by steps)."""
    lr: float | None = None
    per_device_train_batch_size: int | None = None
    weight_decay: float | None = None
    optimizer_lr: float | None = None
    """What the optimizer really used: the PBT resume trap shows here first."""
    optimizer_weight_decay: float | None = None
    world_size: int | None = None
    """From the Trainer itself: proves the ranks formed one process group."""
    effective_batch_size: int | None = None
    deepspeed: bool | None = None
    peak_gpu_memory_mib: float | None = None
    """What torch's allocator on rank 0 held at most (0 on the CPU); :attr:`gpu_memory_peak_mib` is
    the devices' own count."""
    cpu_percent: float | None = None
    """CPU time of the trial's own processes (the trial process, its ranks and their children) from
    the previous report to this one, over that wall time, in percent of one core: 250 is two and a
    half cores busy."""
    cpus_reserved: float | None = None
    """CPUs Ray reserved for the trial (``cpus_per_worker`` x ``workers_per_trial``)."""
    rss_peak_mib: float | None = None
    """The most resident memory the trial's own processes held together at once (sampled)."""
    gpus: int | None = None
    """GPUs assigned to the trial (0: none; None: not measured, an older record)."""
    gpu_util_percent: float | None = None
    """Mean utilization of the trial's GPUs over the iteration (None without a GPU or NVML, never 0)."""
    gpu_memory_peak_mib: float | None = None
    """The most memory in use on the trial's GPUs together, as NVML counts it (None without a GPU or NVML)."""
    monitor_s: float | None = None
    """Seconds the sampler of the fields above spent in this iteration: its cost, to compare with
    ``time_this_iter_s``."""
    segment_start_iteration: int | None = None
    """The iteration the segment started from: where a trial (re)starts, from its own or a donor's checkpoint."""
    exploited_from: str = ""
    """The donor trial, on the first iteration after a PBT exploit."""
    started_from: str = ""
    """The checkpoint this iteration trained from: ``<trial id>@<iteration>`` (the trial's own, or
    its donor's after an exploit), ``base`` for the base model. Two rows of one trial with the same
    iteration are the same iteration run twice (after a fault, or an exploit that went back); this
    says where each began."""
    phases: Mapping[str, float] = field(default_factory=dict)
    """Seconds per phase (:data:`PHASES`), as measured in this iteration."""

    @property
    def hparams(self) -> HParams:
        return HParams.of(dataclasses.asdict(self))

    def metrics(self) -> dict[str, Any]:
        """The flat dict Ray Tune receives (``tune.report``) and the event log keeps."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "phases"}
        out.update({phase_key(p): round(float(v), 4) for p, v in self.phases.items()})
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], **extra: Any) -> Any:
        """The typed form of a flat dict (Ray's result, an event, a saved record's row); keys it
        does not know are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)} - {"phases"}
        values = {k: v for k, v in metrics.items() if k in names}
        phases = {_PHASE_KEYS[k]: float(v) for k, v in metrics.items() if k in _PHASE_KEYS and v is not None}
        if isinstance(metrics.get("phases"), Mapping):
            phases.update(metrics["phases"])
        if values.get("exploited_from") is None:
            values["exploited_from"] = ""
        values.update(extra)
        return cls(**values, phases=phases)

    def metric(self, name: str) -> float | None:
        """The value of a reported metric (``tune.metric``), None when absent or NaN."""
        value = getattr(self, name, None)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclass(frozen=True)
class Iteration(IterationReport):
    """One row of a trial's history: the report as the driver received it, with what the
    scheduler added."""

    training_iteration: int = 0
    """Ray Tune's counter of this trial's reports (the manual grid: the iteration)."""
    time_this_iter_s: float | None = None
    """Seconds since the previous report of this trial process (Ray's clock)."""
    node_ip: str | None = None
    pid: int | None = None
    received_at: float | None = None
    """When the driver received it (one clock for every trial: the driver's)."""

    @property
    def seconds(self) -> float:
        """``time_this_iter_s``, 0 when unknown."""
        return max(float(self.time_this_iter_s or 0.0), 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form of the event log and ``run_record.json``."""
        return self.metrics()

    #: The numbers MLflow logs per iteration (step: the iterations the trial has trained, reruns included).
    LOGGED = ("iteration", "eval_loss", "train_loss", *HPARAMS, "optimizer_lr", "optimizer_weight_decay", "epoch",
              "time_this_iter_s")

    def logged_metrics(self) -> dict[str, float]:
        out = {k: float(getattr(self, k)) for k in self.LOGGED if isinstance(getattr(self, k), (int, float))}
        out.update({phase_key(p): float(v) for p, v in self.phases.items()})
        out.update(self.system_metrics())
        return out

    def system_metrics(self) -> dict[str, float]:
        """The trial's own use of the machine under MLflow's system-metric prefix (``system/``), so the
        UI's "System metrics" tab shows it beside the node-wide figures of ``log_system_metrics``; only
        those measured (no GPU: no GPU metric). Megabytes are MLflow's (10^6 bytes); CPU utilization is
        the percent of the CPUs Ray reserved, ``trial_cpu_cores`` the cores busy on average."""
        out: dict[str, float] = {}
        if self.cpu_percent is not None:
            out[f"{SYSTEM_PREFIX}trial_cpu_cores"] = self.cpu_percent / 100
            if self.cpus_reserved:
                out[f"{SYSTEM_PREFIX}trial_cpu_utilization_percentage"] = self.cpu_percent / self.cpus_reserved
        if self.rss_peak_mib is not None:
            out[f"{SYSTEM_PREFIX}trial_rss_megabytes"] = self.rss_peak_mib * _MIB_IN_MB
        if self.gpu_util_percent is not None:
            out[f"{SYSTEM_PREFIX}trial_gpu_utilization_percentage"] = float(self.gpu_util_percent)
        if self.gpu_memory_peak_mib is not None:
            out[f"{SYSTEM_PREFIX}trial_gpu_memory_megabytes"] = self.gpu_memory_peak_mib * _MIB_IN_MB
        return out
