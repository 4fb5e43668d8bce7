"""Transformers' own PBT path against the harness's, on the same model, data, population and settings.

    python tools/peer.py --seeds 0 1 2 --variants defaults reuse_actors      (make bench-peer)

Users of the HF ``Trainer`` run PBT with ``Trainer.hyperparameter_search(backend="ray")``. For
every seed this tool runs, one after another, each in its own process (whose wall time it measures):

* the harness: ``python -m harness run --strategy pbt --preset smoke --seed S`` (what
  ``make bench-pbt SEEDS=S`` runs), read back from its ``run_record.json``;
* the peer, once per variant: what a user writes from the transformers docs. A ``Trainer`` with a
  ``model_init`` that loads the same tiny BLOOM from the harness cache, the harness's tokenized
  splits and collator, ``eval_strategy="epoch"``, ``save_strategy="epoch"``, then
  ``hyperparameter_search(direction="minimize", backend="ray", hp_space=..., n_trials=<population>,
  scheduler=PopulationBasedTraining(...), resources_per_trial={"cpu": ...},
  max_concurrent_trials=<slots>, keep_checkpoints_num=..., ...)``. ``defaults`` leaves Ray's
  ``reuse_actors`` at its default (False), ``reuse_actors`` passes True. Nothing of HF's or Ray's
  behaviour is changed: the optimizer and scheduler a resumed trial loads stay as HF loads them.

Both sides take every value from the harness's own configuration (the preset through
``harness.tasks.resolve``, ``--set`` overrides applied to both), so they cannot drift: the
population is the PBT registry entry's ``planned_trials``, concurrency ``budget.slots``, CPUs per
trial ``resources``, the epochs ``train.iterations``, the schedule ``train.lr_scheduler``, and
PBT's quantile, resample probability and synchronous mode ``tune``. The peer samples its initial
population with Ray's ``BasicVariantGenerator(random_state=seed)`` (a ``tune.run`` keyword that
``hyperparameter_search`` passes on), the generator and seed the harness uses, so both sides start
from the same configurations; what a seed changes beyond that it changes on both sides.

The peer's only addition is observation: a ``TrainerCallback`` that appends one JSON line per
evaluation (the trial, its configured lr / batch size / weight decay, what the optimizer really
used, eval_loss, epoch, global step, the checkpoint the segment resumed from) to
``reports.jsonl``. From those lines and the harness's record the tool counts, with one rule for
both sides:

* **lr mismatches**: reports whose optimizer lr differs from the trial's configured lr (relative
  1e-9, the harness's own test). Both sides run the harness's constant schedule, which gives
  exactly the configured lr at every step, so any difference is an lr the trial did not ask for.
  The harness records ``optimizer_lr`` the same way (``optimizer.param_groups[0]["lr"]`` after
  each evaluation). Under a decaying schedule the comparison would need the lr the schedule
  started from (the peer's lines hold it, ``optimizer_initial_lr``); the tool refuses one.
* **exact copies**: exploited reports whose eval_loss equals, exactly, another trial's at the same
  epoch: a trial that resumed its donor's weights *and* its donor's optimizer with the same batch
  size trains exactly what the donor trains.
* **barely trained**: trials whose last eval_loss is above :data:`BARELY_TRAINED`.
* the iterations (reports) and epochs each side trained, the initial lrs each side sampled, and
  what Ray reported as the peer's best configuration against what that trial trained with.

It writes ``peer.md`` and ``peer.json`` into ``--out`` (after every run, so a long measurement
that stops keeps what it measured) and prints the markdown; exit 1 when a side failed, or hung
before its trials had trained their last epoch (its error is in the report), 2 on bad input. A
peer run that hung after every trial had trained out is a finding about the peer, not a failed
measurement: the report names it, its losses count, and the exit is 0. A developer tool: not part
of the harness package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's harness (the runs start from ROOT too)

PRESET = "smoke"
VARIANTS = ("defaults", "reuse_actors")
#: A trial whose last eval_loss is above this barely trained: the tiny BLOOM starts near
#: ln(vocabulary) ≈ 7.6 and one epoch at a mid-range lr already takes it below 7.
BARELY_TRAINED = 7.3
#: How close the optimizer's lr must be to the configured one (tests/test_integration.py's rule).
LR_REL_TOL = 1e-9
#: harness/strategies/pbt.py perturbs after every iteration; a unit test holds the two equal.
PERTURBATION_INTERVAL = 1
HARNESS_TIMEOUT_S = 1800
PEER_TIMEOUT_S = 3600
#: A peer run whose callback wrote no line (no segment start, no evaluation) for this long is stuck:
#: synchronous PBT can wait at a barrier for trials that have already ended (a resumed trial whose
#: batch size changed reports a different number of epochs, so the trials' iteration counts part).
#: The longest normal silence is a round's process start-ups and one epoch: well under a minute.
STALL_S = 300.0
#: A Ray Tune run in which no trial runs or waits to start while some are PAUSED is deadlocked for
#: certain: PBT decides on results only, and none can come (Ray 2.60: the controller starts a
#: paused trial only when ``PopulationBasedTraining.choose_trial_to_run`` names it, which in
#: synchronous mode skips trials at the barrier, and only ``on_trial_result`` moves the barrier).
#: Seen when the last trial below the barrier ended (TERMINATED) without reporting it: ray#23472
#: made the barrier ignore ended trials, but it is checked on a result only, and none comes (the
#: timeout ray#12122 asked for does not exist). Ray Tune prints its trial status every
#: RAY_STATUS_EVERY_S; this many prints after the last report, all saying so, end the run without
#: waiting for STALL_S.
DEADLOCK_PRINTS = 2
RAY_STATUS_EVERY_S = 30.0
#: This tool's mark in the environment of every process it starts (Ray's too): how they are found and ended.
MARK = "PEER_TOOL_MARK"
#: Ray's trial ids, ``<5 hex>_<5 digits>``: how a checkpoint's path names the trial that wrote it.
TRIAL_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{5}_\d{5})(?!\d)")


class BadInput(ValueError):
    """A flag's value is unusable; the message names it and the fix."""


class CacheMissing(RuntimeError):
    """The smoke cache for a seed could not be made: neither side of that seed can run."""


# --------------------------------------------------------------------------- the shared configuration

def load_config(seed: int, sets: Sequence[str] = ()) -> Any:
    """The harness's configuration of ``make bench-pbt`` (preset smoke, strategy pbt) at ``seed``,
    with ``--set`` overrides: what both sides run."""
    from harness import tasks
    from harness.config import ConfigError

    overrides: dict[str, Any] = {"strategy": "pbt", "seed": seed}
    origins = {"strategy": "--strategy", "seed": "--seeds"}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set {item!r} is not KEY=VALUE; write e.g. --set budget.trial_iterations=12")
        if key.strip() in ("strategy", "seed", "preset", "task"):
            raise BadInput(f"--set {item!r}: the tool runs PBT on the {PRESET} preset at --seeds; "
                           "set seeds with --seeds, and only other keys with --set")
        overrides[key.strip()], origins[key.strip()] = value.strip(), f"--set {key.strip()}"
    try:
        cfg = tasks.resolve(PRESET, overrides=overrides, override_origins=origins)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if cfg.train.lr_scheduler != "constant" or cfg.train.warmup_steps:
        raise BadInput(f"train.lr_scheduler={cfg.train.lr_scheduler!r} with warmup_steps={cfg.train.warmup_steps}: "
                       "the lr counts compare the optimizer's lr with the trial's, which only a constant schedule "
                       "without warm-up keeps equal; leave train.lr_scheduler=constant and train.warmup_steps=0")
    return cfg


@dataclass(frozen=True)
class Settings:
    """The values both sides share, read from the harness's configuration."""

    seed: int
    population: int
    slots: int
    cpus_per_trial: float
    iterations: int
    lr_lower: float
    lr_upper: float
    bs_choices: tuple[int, ...]
    wd_choices: tuple[float, ...]
    quantile_fraction: float
    resample_probability: float
    synch: bool
    num_to_keep: int
    max_failures: int
    lr_scheduler: str
    eval_batch_size: int
    train_samples: int
    eval_samples: int
    max_length: int
    perturbation_interval: int = PERTURBATION_INTERVAL

    @classmethod
    def of(cls, cfg: Any) -> Settings:
        from harness import strategies

        r, s, t = cfg.resources, cfg.search, cfg.tune
        return cls(seed=cfg.seed, population=strategies.spec("pbt").planned_trials(cfg), slots=cfg.budget.slots,
                   cpus_per_trial=r.workers_per_trial * r.cpus_per_worker, iterations=cfg.train.iterations,
                   lr_lower=s.lr_lower, lr_upper=s.lr_upper, bs_choices=tuple(s.bs_choices),
                   wd_choices=tuple(s.wd_choices), quantile_fraction=t.quantile_fraction,
                   resample_probability=t.resample_probability, synch=t.synch, num_to_keep=t.num_to_keep,
                   max_failures=t.max_failures, lr_scheduler=cfg.train.lr_scheduler,
                   eval_batch_size=cfg.train.eval_batch_size, train_samples=cfg.data.train_samples,
                   eval_samples=cfg.data.eval_samples, max_length=cfg.model.max_length)


def hp_space(s: Settings) -> dict[str, Any]:
    """The peer's ``hp_space``: the harness's sampling space (``SearchSpace.ray_space``) under
    ``TrainingArguments``' names, as the transformers docs write it."""
    from ray import tune

    return {"learning_rate": tune.loguniform(s.lr_lower, s.lr_upper),
            "per_device_train_batch_size": tune.choice(list(s.bs_choices)),
            "weight_decay": tune.choice(list(s.wd_choices))}


def pbt_scheduler(s: Settings) -> Any:
    """Ray's ``PopulationBasedTraining`` as a user configures it for the HF Trainer (Ray's
    ``pbt_transformers`` example), with the harness's values."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr="training_iteration",
        metric="objective",  # what compute_objective returns: eval_loss
        mode="min",
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations={"learning_rate": tune.loguniform(s.lr_lower, s.lr_upper),
                              "per_device_train_batch_size": list(s.bs_choices),
                              "weight_decay": list(s.wd_choices)},
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        synch=s.synch,
    )


# --------------------------------------------------------------------------- the peer (a child process)

def report_log(path: str) -> Any:
    """The observation callback: one JSON line per segment start and per evaluation. It reads and
    writes nothing the Trainer uses (defined here so that transformers is imported only where a
    Trainer runs; Ray pickles it by value)."""
    from transformers import TrainerCallback

    class ReportLog(TrainerCallback):
        def __init__(self, out: str):
            self.out = out
            self.segment: dict[str, Any] = {}

        def _write(self, line: dict[str, Any]) -> None:
            with open(self.out, "a") as fh:  # one write of one short line: appends of 4 processes do not mix
                fh.write(json.dumps(line) + "\n")

        @staticmethod
        def _trial() -> str:
            from ray import tune

            return tune.get_context().get_trial_id() or ""

        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            import uuid

            import torch
            from ray import tune

            checkpoint = tune.get_checkpoint()  # what HF's _objective resumed from (None: the first segment)
            group = optimizer.param_groups[0] if optimizer is not None else {}
            self.segment = {"segment": uuid.uuid4().hex[:12], "resumed_from": checkpoint.path if checkpoint else "",
                            "start_step": int(state.global_step), "start_epoch": float(state.epoch or 0.0)}
            self._write({"event": "segment", "trial_id": self._trial(), "pid": os.getpid(), "at": time.time(),
                         "lr": float(args.learning_rate), "bs": int(args.per_device_train_batch_size),
                         "wd": float(args.weight_decay), "optimizer_lr": float(group.get("lr", math.nan)),
                         "max_steps": int(state.max_steps), "torch_threads": torch.get_num_threads(), **self.segment})

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                        optimizer: Any = None, **kw: Any) -> None:
            group = optimizer.param_groups[0] if optimizer is not None else {}
            self._write({"event": "report", "trial_id": self._trial(), "pid": os.getpid(), "at": time.time(),
                         "lr": float(args.learning_rate), "bs": int(args.per_device_train_batch_size),
                         "wd": float(args.weight_decay),
                         "optimizer_lr": float(group.get("lr", math.nan)),
                         "optimizer_initial_lr": float(group.get("initial_lr", math.nan)),
                         "optimizer_weight_decay": float(group.get("weight_decay", math.nan)),
                         "eval_loss": float((metrics or {}).get("eval_loss", math.nan)),
                         "epoch": float(state.epoch or 0.0), "global_step": int(state.global_step),
                         "max_steps": int(state.max_steps), "num_train_epochs": float(args.num_train_epochs),
                         **self.segment})

    return ReportLog(path)


def run_peer(seed: int, variant: str, out: Path, cache: Path, sets: Sequence[str]) -> dict[str, Any]:
    """One ``Trainer.hyperparameter_search(backend="ray")`` run; writes ``peer_run.json`` (Ray's
    best run and every trial's end) beside the callback's ``reports.jsonl``."""
    import numpy as np
    import ray
    import ray.tune
    import transformers
    from ray.tune.search import BasicVariantGenerator
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from harness.trial.data import PadCollator, TokenizedDataset, load_prepared, prepare
    from harness.trial.model import load_tokenizer, resolve_model_path

    cfg = load_config(seed, sets)
    s = Settings.of(cfg)
    model_path = resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache)
    tokenizer = load_tokenizer(model_path)
    data_path = prepare(cfg.data, tokenizer, seed=cfg.seed, max_length=cfg.model.max_length, cache_dir=cache)
    splits = load_prepared(data_path).splits
    out.mkdir(parents=True, exist_ok=True)
    reports = out / "reports.jsonl"
    reports.unlink(missing_ok=True)
    (out / "inputs.json").write_text(json.dumps({"model_path": model_path, "data_path": str(data_path)}))

    def model_init() -> Any:
        return AutoModelForCausalLM.from_pretrained(model_path)

    args = TrainingArguments(
        output_dir=str(out / "hf"),
        num_train_epochs=s.iterations,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        per_device_eval_batch_size=s.eval_batch_size,
        lr_scheduler_type=s.lr_scheduler,
        seed=s.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(model_init=model_init, args=args, train_dataset=TokenizedDataset(splits["train"]),
                      eval_dataset=TokenizedDataset(splits["validation"]),
                      data_collator=PadCollator(tokenizer.pad_token_id), callbacks=[report_log(str(reports))])
    np.random.seed(seed)  # PBT's resampling (tune.loguniform) draws from numpy's global state
    import random

    random.seed(seed)  # PBT's exploit/explore decisions draw from the random module
    # a private local Ray: this machine may run other Ray clusters, which a bare ray.init() would join
    ray.init(address="local", include_dashboard=False)
    space = hp_space(s)
    kwargs: dict[str, Any] = dict(
        direction="minimize",
        backend="ray",
        hp_space=lambda _: space,
        compute_objective=lambda metrics: metrics["eval_loss"],
        n_trials=s.population,
        scheduler=pbt_scheduler(s),
        resources_per_trial={"cpu": s.cpus_per_trial},
        max_concurrent_trials=s.slots,
        keep_checkpoints_num=s.num_to_keep,
        checkpoint_score_attr="training_iteration",
        max_failures=s.max_failures,
        search_alg=BasicVariantGenerator(random_state=seed),
        storage_path=str(out / "ray"),
        name="peer",
        log_to_file=True,
    )
    if variant == "reuse_actors":
        kwargs["reuse_actors"] = True
    best = trainer.hyperparameter_search(**kwargs)
    trials = [{"trial_id": t.trial_id, "status": t.status, "config": dict(t.config),
               "objective": (t.last_result or {}).get("objective"),
               "training_iteration": (t.last_result or {}).get("training_iteration")}
              for t in best.run_summary.trials]
    summary = {"seed": seed, "variant": variant, "model_path": model_path, "data_path": str(data_path),
               "best": {"trial_id": best.run_id, "objective": best.objective, "hyperparameters": best.hyperparameters},
               "trials": trials, "transformers": transformers.__version__, "ray": ray.__version__}
    (out / "peer_run.json").write_text(json.dumps(summary, indent=2, default=str))
    ray.shutdown()
    return summary


# --------------------------------------------------------------------------- both sides' rows

@dataclass(frozen=True)
class Row:
    """One evaluation of one trial (one report to Ray Tune), as either side's record holds it."""

    trial: str
    lr: float
    """The trial's configured lr while it trained this iteration."""
    bs: int
    wd: float
    optimizer_lr: float
    """The lr the optimizer used (``param_groups[0]["lr"]`` at the evaluation)."""
    eval_loss: float
    epoch: float
    """Epochs behind this checkpoint, as the trainer counts them."""
    trained_epochs: float = 1.0
    """Epochs this report trained (HF skips batches when a resumed trial's batch size differs)."""
    donor: str = ""
    """The trial whose checkpoint this report's segment started from, when not its own."""
    optimizer_wd: float = math.nan
    at: float = 0.0

    @property
    def exploited(self) -> bool:
        return bool(self.donor)

    @property
    def lr_differs(self) -> bool:
        # an optimizer lr the record does not hold is unknown: not counted as a mismatch
        return not math.isnan(self.optimizer_lr) and not math.isclose(self.optimizer_lr, self.lr, rel_tol=LR_REL_TOL)


def donor_of(resumed_from: str, trial: str) -> str:
    """The trial that wrote the checkpoint at ``resumed_from`` (its folder names it), "" when it is
    ``trial``'s own or none."""
    if not resumed_from:
        return ""
    found = TRIAL_ID.findall(Path(resumed_from).parent.name) or TRIAL_ID.findall(resumed_from)
    owner = found[0] if found else "?"
    return "" if owner == trial else owner


def peer_rows(lines: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The peer's reports from its callback's lines, in the order they were written."""
    rows = []
    last_step: dict[str, int] = {}  # segment -> global step of its previous report
    for line in lines:
        if line.get("event") != "report":
            continue
        segment = str(line.get("segment", ""))
        steps_per_epoch = float(line["max_steps"]) / float(line["num_train_epochs"] or 1)
        previous = last_step.get(segment, int(line.get("start_step", 0)))
        last_step[segment] = int(line["global_step"])
        rows.append(Row(trial=line["trial_id"], lr=float(line["lr"]), bs=int(line["bs"]), wd=float(line["wd"]),
                        optimizer_lr=float(line["optimizer_lr"]), eval_loss=float(line["eval_loss"]),
                        epoch=float(line["epoch"]),
                        trained_epochs=(int(line["global_step"]) - previous) / steps_per_epoch if steps_per_epoch else 0.0,
                        donor=donor_of(str(line.get("resumed_from", "")), line["trial_id"]),
                        optimizer_wd=float(line.get("optimizer_weight_decay", math.nan)), at=float(line.get("at", 0.0))))
    return rows


def peer_initial_configs(lines: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """trial -> the configuration its first segment (no checkpoint) trained with."""
    out: dict[str, dict[str, float]] = {}
    for line in lines:
        if line.get("event") == "segment" and not line.get("resumed_from") and line["trial_id"] not in out:
            out[line["trial_id"]] = {"lr": float(line["lr"]), "bs": int(line["bs"]), "wd": float(line["wd"])}
    return out


def harness_rows(record: Any) -> list[Row]:
    """The harness's rows (superseded ones too: they were trained), in the order they arrived; a
    segment that began with an exploit keeps its donor for every row it trained."""
    rows = []
    for trial in record.trials:
        donor, segment = "", None
        for r in trial.all_rows:
            if r.exploited_from:
                donor, segment = r.exploited_from, r.segment_start_iteration
            elif r.segment_start_iteration != segment:
                donor, segment = "", r.segment_start_iteration
            rows.append(Row(trial=trial.trial_id, lr=float(r.lr), bs=int(r.per_device_train_batch_size),
                            wd=float(r.weight_decay), optimizer_lr=_number(r.optimizer_lr),
                            eval_loss=_number(r.eval_loss),
                            epoch=float(r.epoch if r.epoch is not None else r.iteration), trained_epochs=1.0,
                            donor=donor, optimizer_wd=_number(r.optimizer_weight_decay),
                            at=float(r.received_at or 0.0)))
    return sorted(rows, key=lambda row: row.at)


def _number(value: float | None) -> float:
    """A recorded figure; NaN where the record has none (an unknown value never matches a config)."""
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- what the rows say

def exact_copies(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """Exploited reports whose eval_loss equals, exactly, another trial's at the same epoch (the
    donor's when it has one there): (the copy, the report it equals)."""
    by_epoch: dict[float, list[Row]] = {}
    for row in rows:
        by_epoch.setdefault(round(row.epoch, 6), []).append(row)
    out = []
    for row in rows:
        if not row.exploited:
            continue
        same = [o for o in by_epoch[round(row.epoch, 6)] if o.trial != row.trial and o.eval_loss == row.eval_loss]
        if same:
            out.append((row, next((o for o in same if o.trial == row.donor), same[0])))
    return out


def final_losses(rows: Sequence[Row]) -> dict[str, float]:
    """trial -> eval_loss of its last report."""
    out: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r.at):
        out[row.trial] = row.eval_loss
    return out


def lr_from_a_donor(row: Row, rows: Sequence[Row]) -> bool:
    """Whether ``row``'s optimizer lr is exactly an lr another trial was configured with: the
    donor's optimizer state came with the checkpoint."""
    return any(o.trial != row.trial and math.isclose(o.lr, row.optimizer_lr, rel_tol=LR_REL_TOL) for o in rows)


@dataclass
class Side:
    """One side of one seed: its figures, from its own record."""

    side: str
    seed: int
    wall_s: float = math.nan
    ok: bool = False
    error: str = ""
    best_eval_loss: float = math.nan
    best_trial: str = ""
    best_config: dict[str, Any] = field(default_factory=dict)
    best_config_trained: bool | None = None
    """Whether the trial Ray (or the harness) names best trained a report with that configuration
    (optimizer lr, batch size, weight decay)."""
    best_report: dict[str, Any] = field(default_factory=dict)
    """The best trial's last report: what produced the best eval_loss."""
    trials: int = 0
    reports: int = 0
    epochs_trained: float = 0.0
    exploited_reports: int = 0
    lr_mismatch: int = 0
    lr_mismatch_exploited: int = 0
    """Of ``lr_mismatch``: reports of trials that had been exploited before (the donor's optimizer
    comes with the checkpoint, and the trial's own later checkpoints carry it on)."""
    lr_from_donor: int = 0
    exact_copies: int = 0
    copies: list[str] = field(default_factory=list)
    barely_trained: int = 0
    final_losses: dict[str, float] = field(default_factory=dict)
    initial_lrs: list[float] = field(default_factory=list)
    initial_configs: dict[str, dict[str, float]] = field(default_factory=dict)
    model_path: str = ""
    data_path: str = ""
    run_dir: str = ""
    torch_threads: list[int] = field(default_factory=list)
    """The peer's torch threads per trial process (the harness sets 1 per 0.5-CPU trial)."""
    hung: bool = False
    """The peer stopped moving (see :data:`STALL_S`) and was ended: its figures are what it had
    trained by then, and Ray Tune returned no best run."""
    hung_at_s: float = math.nan
    trained_out: bool = False
    """Every trial had trained its last epoch (or ended): its losses are final even when Ray Tune
    never returned, so the loss comparison takes them (the wall comparison does not)."""
    lrs_used: int = 0
    """Distinct learning rates the optimizers trained with."""
    lrs_new: int = 0
    """Of those, lrs no trial started with: what PBT's explore step added (an exploit that
    restores the donor's optimizer adds none)."""
    distinct_final: int = 0
    """Distinct last eval_losses over the trials: the population's diversity at the end."""
    ray_iterations: int = 0
    """Iterations Ray Tune counted (``training_iteration`` summed over the trials; the harness: its rows)."""
    idle_segments: int = 0
    untouched: dict[str, list[float]] = field(default_factory=dict)
    """Initial configuration (:func:`config_key`) -> its trial's eval_loss at epochs 1, 2, ... for
    as long as the trial was never exploited and its optimizer trained with its own lr: the same
    weights and the same lr on both sides, which compares how each side continues a trial."""
    best_data_epochs: float = math.nan
    """Epochs of training data behind the best report's weights, along the checkpoints it descends
    from (a donor's included): the harness trains one epoch an iteration, so its best has as many
    as iterations; HF resumes a donor's checkpoint by global step in the trial's own batch size."""
    """Peer segments that resumed at the last epoch and trained nothing: a mutation after the
    last evaluation (the trial's final config never trained)."""


def measure(side: Side, rows: Sequence[Row], initial: Mapping[str, Mapping[str, float]]) -> Side:
    """Fill ``side``'s counts from its rows and its trials' initial configurations."""
    side.trials = len(initial) or len({r.trial for r in rows})
    side.reports = len(rows)
    side.epochs_trained = round(sum(r.trained_epochs for r in rows), 3)
    side.exploited_reports = sum(r.exploited for r in rows)
    differs = [r for r in rows if r.lr_differs]
    side.lr_mismatch = len(differs)
    exploited: set[str] = set()
    for r in sorted(rows, key=lambda r: r.at):
        exploited |= {r.trial} if r.exploited else set()
        side.lr_mismatch_exploited += r.lr_differs and r.trial in exploited
    side.lr_from_donor = sum(lr_from_a_donor(r, rows) for r in differs)
    copies = exact_copies(rows)
    side.exact_copies = len(copies)
    side.copies = [f"{short(c.trial)} = {short(o.trial)} at epoch {c.epoch:g} (eval_loss {c.eval_loss:.4f})"
                   for c, o in copies]
    side.final_losses = final_losses(rows)
    side.barely_trained = sum(v > BARELY_TRAINED for v in side.final_losses.values())
    side.distinct_final = len(set(side.final_losses.values()))
    side.initial_configs = {k: dict(v) for k, v in initial.items()}
    side.initial_lrs = sorted(float(c["lr"]) for c in initial.values())
    side.untouched = untouched(rows, initial)
    used = distinct(r.optimizer_lr for r in rows)
    side.lrs_used = len(used)
    side.lrs_new = sum(not any(math.isclose(lr, x, rel_tol=LR_REL_TOL) for x in side.initial_lrs) for lr in used)
    return side


def config_key(config: Mapping[str, float]) -> str:
    return f"lr={float(config['lr']):.6e},bs={int(config['bs'])},wd={float(config['wd']):g}"


def untouched(rows: Sequence[Row], initial: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """See :attr:`Side.untouched`."""
    out: dict[str, list[float]] = {}
    for trial, config in initial.items():
        losses: list[float] = []
        for r in sorted((r for r in rows if r.trial == trial), key=lambda r: r.at):
            if (r.exploited or r.epoch != len(losses) + 1
                    or not math.isclose(r.optimizer_lr, float(config["lr"]), rel_tol=LR_REL_TOL)):
                break
            losses.append(r.eval_loss)
        out[config_key(config)] = losses
    return out


def continuations(h: Side, p: Side) -> dict[int, list[float]]:
    """epoch -> peer − harness eval_loss of every initial configuration both sides trained to that
    epoch untouched (:attr:`Side.untouched`)."""
    out: dict[int, list[float]] = {}
    for key, mine in h.untouched.items():
        theirs = p.untouched.get(key, [])
        for epoch in range(1, min(len(mine), len(theirs)) + 1):
            out.setdefault(epoch, []).append(theirs[epoch - 1] - mine[epoch - 1])
    return out


def continuation_text(by_epoch: Mapping[int, Sequence[float]]) -> str:
    parts = []
    for epoch, d in sorted(by_epoch.items()):
        if epoch == 1:
            parts.append(f"at epoch 1 equal in {sum(x == 0 for x in d)} of {len(d)}")
        else:
            parts.append(f"at epoch {epoch} lower on the peer in {sum(x < 0 for x in d)} of {len(d)} "
                         f"(median peer − harness {statistics.median(d):+.3f})")
    return "; ".join(parts) or "no configuration trained untouched on both sides"


def distinct(values: Iterable[float]) -> list[float]:
    """``values`` without repeats (equal within :data:`LR_REL_TOL`), in order."""
    out: list[float] = []
    for v in values:
        if not any(math.isclose(v, x, rel_tol=LR_REL_TOL) for x in out):
            out.append(v)
    return out


def trained_with(trial: str, config: Mapping[str, Any], rows: Sequence[Row]) -> bool:
    """Whether ``trial`` trained a report whose optimizer used ``config``'s lr and whose Trainer
    ran its batch size and weight decay."""
    lr = float(config.get("learning_rate", config.get("lr", math.nan)))
    bs = int(config.get("per_device_train_batch_size", -1))
    wd = float(config.get("weight_decay", math.nan))
    return any(r.trial == trial and math.isclose(r.optimizer_lr, lr, rel_tol=LR_REL_TOL) and r.bs == bs
               and math.isclose(r.optimizer_wd, wd, abs_tol=1e-12) for r in rows)


def short(trial_id: str) -> str:
    """``c04`` for Ray's ``…_00003`` (the harness's names, :func:`harness.contract.record.short_id`)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return f"c{int(tail) + 1:02d}" if tail.isdigit() else trial_id


def last_report(trial: str, rows: Sequence[Row]) -> dict[str, Any]:
    mine = [r for r in rows if r.trial == trial]
    return asdict(max(mine, key=lambda r: r.at)) if mine else {}


def harness_side(seed: int, run_dir: Path, wall_s: float) -> Side:
    from harness.contract.rundir import RunDir

    record = RunDir(run_dir).record()
    rows = harness_rows(record)
    side = measure(Side("harness", seed, wall_s=wall_s, ok=True, run_dir=str(run_dir)), rows,
                   {t.trial_id: {"lr": float(t.initial_config["lr"]), "bs": int(t.initial_config["per_device_train_batch_size"]),
                                 "wd": float(t.initial_config["weight_decay"])} for t in record.trials})
    best = record.best_trial()
    if best is not None:
        side.best_eval_loss, side.best_trial = best.eval_loss, best.trial_id
        side.best_config = dict(best.final_config)
        side.best_config_trained = trained_with(best.trial_id, side.best_config, rows)
        side.best_report = last_report(best.trial_id, rows)
        side.best_data_epochs = float(best.history[-1].iteration)  # one epoch an iteration, a donor's included
    log = run_dir / "harness.log"
    found = re.search(r"model: (\S+); tokenized data: (\S+)", log.read_text(errors="replace")) if log.is_file() else None
    if found:
        side.model_path, side.data_path = found.group(1), found.group(2)
    return side


def peer_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "reports.jsonl").read_text().splitlines() if line.strip()]


def idle(line: Mapping[str, Any]) -> bool:
    """A segment that resumed at or past its last step: it trains nothing (HF counts the donor's
    global step in the trial's own batch size, so a larger one can put it past the end)."""
    return line.get("event") == "segment" and int(line["start_step"]) >= int(line["max_steps"])


def data_behind(lines: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """trial -> epochs of training data behind its last report's weights: what its segment trained
    (steps in that segment's batch size, as a fraction of an epoch) on top of what the checkpoint it
    resumed from had behind it, the donor's report at that global step (NaN where none is found)."""
    reports: dict[str, list[tuple[int, float]]] = {}  # trial -> (global step, data) of each report, in order
    segments: dict[str, tuple[float, int]] = {}  # segment -> (data, global step) at its latest line
    out: dict[str, float] = {}
    for line in lines:
        trial, segment = line["trial_id"], str(line.get("segment", ""))
        if line.get("event") == "segment":
            base = 0.0
            if line.get("resumed_from"):
                owner = donor_of(str(line["resumed_from"]), trial) or trial
                at_step = [d for step, d in reports.get(owner, []) if step == int(line["start_step"])]
                base = at_step[-1] if at_step else math.nan
            segments[segment] = (base, int(line["start_step"]))
        elif line.get("event") == "report":
            base, previous = segments.get(segment, (math.nan, int(line.get("start_step", 0))))
            per_epoch = float(line["max_steps"]) / float(line["num_train_epochs"] or 1)
            data = base + (int(line["global_step"]) - previous) / per_epoch
            segments[segment] = (data, int(line["global_step"]))
            reports.setdefault(trial, []).append((int(line["global_step"]), data))
            out[trial] = data
    return out


def partial(side: Side, out: Path) -> Side:
    """A peer side's figures from its callback's lines (read once). Its best trial is the one
    ``side`` names already (Ray Tune's), else the lowest last eval_loss (Ray Tune never returned)."""
    lines = peer_lines(out)
    rows = peer_rows(lines)
    measure(side, rows, peer_initial_configs(lines))
    side.run_dir = str(out)
    if (out / "inputs.json").is_file():
        inputs = json.loads((out / "inputs.json").read_text())
        side.model_path, side.data_path = inputs["model_path"], inputs["data_path"]
    side.torch_threads = sorted({int(line["torch_threads"]) for line in lines if "torch_threads" in line})
    side.idle_segments = sum(idle(line) for line in lines)
    last = {line["trial_id"]: line for line in lines}
    side.trained_out = bool(last) and all(
        idle(line) or line.get("event") == "report" and float(line["epoch"]) >= float(line["num_train_epochs"])
        for line in last.values())
    if not side.best_trial and side.final_losses:
        side.best_trial, side.best_eval_loss = min(side.final_losses.items(), key=lambda kv: kv[1])
    if side.best_trial:
        side.best_report = last_report(side.best_trial, rows)
        side.best_data_epochs = data_behind(lines).get(side.best_trial, math.nan)
    if side.best_config:
        side.best_config_trained = trained_with(side.best_trial, side.best_config, rows)
    return side


def peer_side(seed: int, variant: str, out: Path, wall_s: float) -> Side:
    run = json.loads((out / "peer_run.json").read_text())
    best = run["best"]
    side = partial(Side(f"peer {variant}", seed, wall_s=wall_s, ok=True, best_eval_loss=float(best["objective"]),
                        best_trial=best["trial_id"], best_config=dict(best["hyperparameters"])), out)
    side.ray_iterations = sum(int(t.get("training_iteration") or 0) for t in run["trials"])
    return side


# --------------------------------------------------------------------------- running the sides

def child_env(cache: Path) -> dict[str, str]:
    """Offline, the cache both sides read, a private local Ray and the run folder's own MLflow (as
    ``make bench-pbt`` runs)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HARNESS_CACHE": str(cache),
           "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def tail_error(text: str) -> str:
    """The line a user would quote: the last exception line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
    return (errors or lines or [""])[-1][:500]


def ray_status(text: str) -> str:
    """Ray Tune's last status lines in a peer's output: which trials wait, and the CPUs in use."""
    status = re.findall(r"Trial status: ([^\n]+)", text)
    usage = re.findall(r"Logical resource usage: ([^\n]+)", text)
    return "; ".join(filter(None, [status[-1].strip() if status else "", usage[-1].strip() if usage else ""]))


def deadlocked(text: str, since: float) -> str:
    """Ray Tune's status when its last :data:`DEADLOCK_PRINTS` status prints, all made after
    ``since`` (epoch seconds: the last report), say trials are PAUSED and none RUNNING or PENDING
    (see :data:`DEADLOCK_PRINTS`); else "". Ray prints "Current time" in the local time zone."""
    prints = re.findall(r"Trial status: ([^\n]+)\nCurrent time: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    after = [status.strip() for status, at in prints
             if time.mktime(time.strptime(at, "%Y-%m-%d %H:%M:%S")) > since]
    last = after[-DEADLOCK_PRINTS:]
    if len(last) < DEADLOCK_PRINTS or not all("PAUSED" in s and "RUNNING" not in s and "PENDING" not in s for s in last):
        return ""
    return last[-1]


@dataclass
class Outcome:
    rc: int
    wall_s: float
    error: str = ""
    hung_at_s: float = math.nan
    """When the process stalled: seconds from its start to its last progress (then it was killed)."""


def timed(cmd: list[str], log: Path, cache: Path, timeout: float, progress: Path | None = None,
          stall_s: float = STALL_S) -> Outcome:
    """Run ``cmd`` from ROOT with its output in ``log`` and measure its wall time. A run past
    ``timeout``, or one whose ``progress`` file has not grown for ``stall_s`` seconds or whose Ray
    Tune is :func:`deadlocked` since it last grew, is ended with every process it started (they
    carry this tool's mark in their environment)."""
    from harness.cluster import watchdog

    log.parent.mkdir(parents=True, exist_ok=True)
    mark = uuid.uuid4().hex
    started, started_at = time.monotonic(), time.time()
    stalled, deadlock, checked = math.nan, "", 0.0
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**child_env(cache), MARK: mark}, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                last = max(started_at, progress.stat().st_mtime if progress is not None and progress.is_file() else 0.0)
                quiet = time.time() - last
                if progress is not None and quiet > RAY_STATUS_EVERY_S and time.monotonic() - checked > 5:
                    deadlock, checked = deadlocked(log.read_text(errors="replace"), last), time.monotonic()
                if progress is not None and (quiet > stall_s or deadlock):
                    stalled = last - started_at
                if time.monotonic() - started > timeout or not math.isnan(stalled):
                    _end(proc, watchdog.marked(mark, variable=MARK))
                    break
        except BaseException:  # Ctrl-C or SIGTERM to this tool: the side runs in a session of its own
            _end(proc, watchdog.marked(mark, variable=MARK))
            raise
    wall = time.monotonic() - started
    for leftover in watchdog.marked(mark, variable=MARK):  # Ray's processes outlive a killed driver a moment
        _end(None, [leftover])
    text = log.read_text(errors="replace")
    if deadlock:
        return Outcome(-1, wall, f"hung: deadlocked after the last report at {stalled:.0f} s: trials wait PAUSED "
                                 f"and none runs or waits to start, so no result can come to move PBT on; "
                                 f"Ray Tune said: {ray_status(text) or deadlock}", hung_at_s=stalled)
    if not math.isnan(stalled):
        return Outcome(-1, wall, f"hung: no report for {stall_s:.0f} s after the last one at {stalled:.0f} s; "
                                 f"Ray Tune said: {ray_status(text) or '?'}", hung_at_s=stalled)
    if wall > timeout:
        return Outcome(124, wall, f"timed out after {timeout:.0f} s")
    return Outcome(proc.returncode, wall, "" if proc.returncode == 0 else tail_error(text))


def _end(proc: subprocess.Popen | None, others: Sequence[Any]) -> None:
    """SIGTERM, then SIGKILL after 15 s: ``proc`` (a session of its own) and ``others``."""
    import psutil

    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    for other in others:
        try:
            other.terminate()
            other.wait(15)
        except psutil.TimeoutExpired:
            other.kill()
        except psutil.Error:
            pass


def ensure_cache(seed: int, cache: Path, sets: Sequence[str], log: Path) -> None:
    """The smoke cache for ``seed`` (``make prepare``'s command), filled only when the offline check
    fails, so that neither side's wall time pays for it."""
    base = [sys.executable, "-m", "harness", "prepare", "--preset", PRESET, "--seed", str(seed),
            *[f"--set={item}" for item in sets]]
    if timed([*base, "--check"], log, cache, 600).rc != 0:
        done = timed(base, log, cache, 1200)
        if done.rc != 0:
            raise CacheMissing(f"harness prepare --seed {seed} failed: {done.error} (see {log})")


OUTCOME = "outcome.json"  # beside each side's run: its exit, wall time, error (what --rebuild reads)


def run_harness_side(seed: int, folder: Path, cache: Path, sets: Sequence[str]) -> Side:
    shutil.rmtree(folder, ignore_errors=True)  # this tool's own folder from an earlier invocation
    cmd = [sys.executable, "-m", "harness", "run", "--strategy", "pbt", "--preset", PRESET, "--seed", str(seed),
           "--results-dir", str(folder / "results"), *[f"--set={item}" for item in sets]]
    done = timed(cmd, folder / "harness.out", cache, HARNESS_TIMEOUT_S)
    (folder / OUTCOME).write_text(json.dumps(asdict(done)))
    return read_harness_side(seed, folder)


def read_harness_side(seed: int, folder: Path) -> Side:
    done = Outcome(**json.loads((folder / OUTCOME).read_text()))
    results = folder / "results"
    runs = [p for p in results.iterdir() if (p / "run_record.json").is_file()] if results.is_dir() else []
    if done.rc != 0 or len(runs) != 1:
        return Side("harness", seed, wall_s=done.wall_s, error=done.error or f"{len(runs)} run folders in {results}")
    return harness_side(seed, runs[0], done.wall_s)


def run_peer_side(seed: int, variant: str, folder: Path, cache: Path, sets: Sequence[str]) -> Side:
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_peer", "--seed", str(seed), "--variant", variant,
           "--out", str(folder), "--cache", str(cache), *[f"--set={item}" for item in sets]]
    done = timed(cmd, folder.with_name(folder.name + ".out"), cache, PEER_TIMEOUT_S, progress=folder / "reports.jsonl")
    shutil.rmtree(folder / "hf", ignore_errors=True)  # the Trainer's own per-epoch checkpoints: disk only
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTCOME).write_text(json.dumps(asdict(done)))
    return read_peer_side(seed, variant, folder)


def read_peer_side(seed: int, variant: str, folder: Path) -> Side:
    done = Outcome(**json.loads((folder / OUTCOME).read_text()))
    if done.rc == 0 and (folder / "peer_run.json").is_file():
        return peer_side(seed, variant, folder, done.wall_s)
    side = Side(f"peer {variant}", seed, wall_s=done.wall_s, error=done.error or "no peer_run.json",
                hung=not math.isnan(done.hung_at_s), hung_at_s=done.hung_at_s)
    if side.hung and (folder / "reports.jsonl").is_file():  # what the trials trained until Ray stopped moving
        partial(side, folder)
    return side


# --------------------------------------------------------------------------- the report

def median(values: Iterable[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def paired(variant: str, harness: Sequence[Side], peer: Sequence[Side], key: str) -> Any:
    """The harness's exact paired test (``seeds.paired_p``, its verdict words) of the peer variant
    against the harness on ``key``, paired by seed."""
    from harness.reporting.seeds import PairedTest, paired_p

    h = {s.seed: getattr(s, key) for s in harness if s.ok}
    p = {s.seed: getattr(s, key) for s in peer if counts(s, key)}
    seeds = tuple(sorted(set(h) & set(p)))
    differences = tuple(p[s] - h[s] for s in seeds)
    key_name = "best_eval_loss" if key == "best_eval_loss" else "wall_s"
    return PairedTest(f"peer {variant}", "harness", key_name, seeds, differences, paired_p(differences), primary=True)


def measured(side: Side) -> bool:
    """Whether the tool measured ``side``: it completed, or it hung after its trials had trained
    their last epoch (the peer's hang is then a finding; only its wall time is missing)."""
    return side.ok or side.hung and side.trained_out


def counts(side: Side, key: str) -> bool:
    """Whether ``side`` enters the medians and the test of ``key``: a completed run; for the loss
    every :func:`measured` one (a hung run's losses are final once its trials trained out)."""
    return measured(side) if key == "best_eval_loss" else side.ok


def fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def lr_text(values: Sequence[float]) -> str:
    if not values:
        return "—"
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return f"min {min(values):.2e}, quartiles {q[0]:.2e} / {q[1]:.2e} / {q[2]:.2e}, max {max(values):.2e}"


def config_text(config: Mapping[str, Any]) -> str:
    lr = config.get("learning_rate", config.get("lr"))
    return (f"lr {float(lr):.3g}, bs {config.get('per_device_train_batch_size')}, wd {config.get('weight_decay')}"
            if lr is not None else "—")


def build_report(settings: Settings | None, sides: Sequence[Side], variants: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The markdown and the JSON of every side measured so far."""
    from harness.reporting.seeds import seeds_to_decide, smallest_p

    harness = [s for s in sides if s.side == "harness"]
    seeds = sorted({s.seed for s in sides})
    lines = ["## PBT: transformers' hyperparameter_search(backend=\"ray\") against the harness", ""]
    if settings is not None:
        lines += [f"Both sides: preset {PRESET}, tiny BLOOM and synthetic SQuAD from the harness cache "
                  f"({settings.train_samples} train / {settings.eval_samples} eval samples, max_length "
                  f"{settings.max_length}), {settings.iterations} iterations (epoch + evaluation), PBT population "
                  f"{settings.population}, {settings.slots} trials at once on {settings.cpus_per_trial:g} CPU each, "
                  f"synch={settings.synch}, quantile_fraction {settings.quantile_fraction}, perturbation_interval "
                  f"{settings.perturbation_interval}, lr log-uniform {settings.lr_lower:g}..{settings.lr_upper:g}, "
                  f"bs {list(settings.bs_choices)}, wd {list(settings.wd_choices)}, {settings.lr_scheduler} lr "
                  f"schedule; seeds {' '.join(map(str, seeds))}. Wall: each side's whole process.", ""]
    tests: dict[str, Any] = {}
    for variant in variants:
        peer = [s for s in sides if s.side == f"peer {variant}"]
        if not peer:
            continue
        lines += [f"### peer: {variant}", "",
                  "| seed | wall harness (s) | wall peer (s) | peer / harness | best eval_loss harness | best eval_loss peer "
                  "| reports with optimizer lr ≠ trial lr: harness | peer | exact copies: harness | peer "
                  f"| trials ending above {BARELY_TRAINED}: harness | peer |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        by_seed = {s.seed: s for s in harness}
        ratios = []
        for p in sorted(peer, key=lambda s: s.seed):
            h = by_seed.get(p.seed, Side("harness", p.seed))
            ratio = p.wall_s / h.wall_s if p.ok and h.ok else math.nan
            ratios.append(ratio)
            wall = f"hung (last report at {p.hung_at_s:.0f})" if p.hung else fmt(p.wall_s if p.ok else math.nan, 0)
            lines.append(f"| {p.seed} | {fmt(h.wall_s, 0)} | {wall} | {fmt(ratio, 2)} | "
                         f"{fmt(h.best_eval_loss)} | {fmt(p.best_eval_loss)} | {h.lr_mismatch} of {h.reports} | "
                         f"{p.lr_mismatch} of {p.reports} | {h.exact_copies} of {h.exploited_reports} | "
                         f"{p.exact_copies} of {p.exploited_reports} | {h.barely_trained} of {h.trials} | "
                         f"{p.barely_trained} of {p.trials} |")
        both = [p for p in peer if by_seed.get(p.seed, Side("harness", p.seed)).ok]
        walls = [p for p in both if counts(p, "wall_s")]
        losses = [p for p in both if counts(p, "best_eval_loss")]
        lines.append(f"| median | {fmt(median(by_seed[p.seed].wall_s for p in walls), 0)} | "
                     f"{fmt(median(p.wall_s for p in walls), 0)} | {fmt(median(ratios), 2)} | "
                     f"{fmt(median(by_seed[p.seed].best_eval_loss for p in losses))} | "
                     f"{fmt(median(p.best_eval_loss for p in losses))} | | | | | | |")
        loss, wall = paired(variant, harness, peer, "best_eval_loss"), paired(variant, harness, peer, "wall_s")
        n = loss.n
        lines += ["", f"- best eval_loss, peer − harness per seed {[round(d, 3) for d in loss.differences]}: "
                      f"{loss.verdict()}",
                  f"- wall, peer − harness per seed {[round(d, 1) for d in wall.differences]} s: {wall.verdict()}"]
        if n and smallest_p(n) > 0.05:
            lines.append(f"- with {n} seed(s) no exact paired test can reach p < 0.05: its smallest p is 2/2^{n} = "
                         f"{smallest_p(n):.3g}; {seeds_to_decide()} seeds are the fewest that can decide")
        if len(walls) < len(peer) or len(losses) < len(peer):
            lines.append(f"- the wall medians and test take the {len(walls)} seed(s) where both sides completed; the "
                         f"loss ones {len(losses)}, with runs that hung after every trial had trained its last epoch "
                         "(their losses are final; Ray Tune never returned, so such a run has no wall time)")
        errors = [f"{'HUNG' if s.hung else 'FAILED'} {s.side} seed {s.seed}: {s.error}" for s in peer + harness
                  if s.error]
        lines += [f"- {e}" for e in dict.fromkeys(errors)]
        lines.append("")
        tests[variant] = {"best_eval_loss": {"differences": loss.differences, "p": loss.p, "verdict": loss.verdict()},
                          "wall_s": {"differences": wall.differences, "p": wall.p, "verdict": wall.verdict()},
                          "median_wall_ratio": median(ratios), "smallest_p": smallest_p(n)}
    lines += ["### Where the loss gap comes from (the records)", ""]
    for seed in seeds:
        here = [s for s in sides if s.seed == seed and (s.ok or s.hung)]
        if not here:
            continue
        lines.append(f"**seed {seed}**")
        h = next((s for s in here if s.side == "harness"), None)
        for s in here:
            same_start = "" if h is None or s is h else (
                " (the same initial configurations as the harness)" if _same_configs(s.initial_configs, h.initial_configs)
                else " (initial configurations differ from the harness's)")
            lines.append(f"- {s.side}: initial lrs {lr_text(s.initial_lrs)}{same_start}")
        for s in here:
            counted = (f" (Ray Tune counted {s.ray_iterations} iterations)"
                       if s.ray_iterations and s.ray_iterations != s.reports else "")
            idle = (f"; {s.idle_segments} segments resumed at the last epoch and trained nothing"
                    if s.idle_segments else "")
            threads = f"; torch threads per trial {s.torch_threads}" if s.torch_threads else ""
            lines.append(f"- {s.side}: {s.reports} reports{counted}, {s.epochs_trained:g} epochs trained{idle}{threads}; "
                         f"{s.exploited_reports} "
                         f"reports after an exploit, {s.lr_mismatch} with the optimizer's lr ≠ the trial's "
                         f"({s.lr_mismatch_exploited} in trials exploited before, {s.lr_from_donor} exactly another trial's lr), "
                         f"{s.exact_copies} exact copies of another trial's eval_loss at the same epoch; "
                         f"{s.barely_trained} of {s.trials} trials ended above {BARELY_TRAINED}; the optimizers "
                         f"trained with {s.lrs_used} distinct lrs, {s.lrs_new} of them new (not an initial lr); "
                         f"{s.distinct_final} distinct last eval_losses over {len(s.final_losses)} trials: "
                         f"{', '.join(f'{v:.4f}' for v in sorted(s.final_losses.values()))}")
        for s in here:
            if s.hung:
                ended = ("every trial had trained its last epoch or ended" if s.trained_out
                         else "some trials had not trained their last epoch")
                lines.append(f"- {s.side} hung: its last report came at {s.hung_at_s:.0f} s, when {ended}; Ray Tune "
                             f"named no best run; the lowest last eval_loss was {short(s.best_trial)}'s "
                             f"{fmt(s.best_eval_loss)}, on weights that had seen {fmt(s.best_data_epochs, 2)} epochs "
                             "of training data")
                continue
            trained = {True: "trained with", False: "never trained with", None: "?"}[s.best_config_trained]
            report = s.best_report
            got = (f"; the report behind {fmt(s.best_eval_loss)} trained with optimizer lr {report['optimizer_lr']:.3g} "
                   f"(configured {report['lr']:.3g}), bs {report['bs']}, on weights that had seen "
                   f"{fmt(s.best_data_epochs, 2)} epochs of training data" if report else "")
            lines.append(f"- {s.side} names {short(s.best_trial)} best: {config_text(s.best_config)}, which it "
                         f"{trained}{got}")
        if h is not None:
            for s in here:
                if s is not h:
                    lines.append(f"- the same initial configuration, never exploited and trained at its own lr on both "
                                 f"sides (the same weights, the same lr), {s.side} against the harness: "
                                 f"{continuation_text(continuations(h, s))}")
        if h is not None:
            others = [s for s in here if s is not h]
            if any(s.model_path != h.model_path or s.data_path != h.data_path for s in others):
                lines.append("- WARNING: the sides read different model or data files: "
                             + "; ".join(f"{s.side} {s.model_path} {s.data_path}" for s in here))
            elif h.model_path:
                lines.append(f"- every side read the model {h.model_path} and the tokenized data {h.data_path}")
        lines.append("")
    for variant in variants:
        pooled: dict[int, list[float]] = {}
        for p in (s for s in sides if s.side == f"peer {variant}" and (s.ok or s.hung)):
            h = next((s for s in sides if s.side == "harness" and s.seed == p.seed and s.ok), None)
            for epoch, d in (continuations(h, p) if h is not None else {}).items():
                pooled.setdefault(epoch, []).extend(d)
        if pooled:
            lines += [f"Continuing a trial, every seed, peer {variant} against the harness: {continuation_text(pooled)}.", ""]
            tests.setdefault(variant, {})["continuations"] = {str(e): d for e, d in sorted(pooled.items())}
    lines.append("The copies: " + "; ".join(f"{s.side} seed {s.seed}: {', '.join(s.copies)}" for s in sides
                                             if s.copies) if any(s.copies for s in sides) else "")
    data = {"settings": asdict(settings) if settings else None, "seeds": seeds, "variants": list(variants),
            "barely_trained_above": BARELY_TRAINED, "sides": [asdict(s) for s in sides], "tests": tests}
    return "\n".join(lines).rstrip() + "\n", data


def _same_configs(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether two populations started from the same configurations (trial names aside)."""
    def key(c: Mapping[str, float]) -> tuple[float, int, float]:
        return round(float(c["lr"]), 15), int(c["bs"]), float(c["wd"])

    return bool(a) and sorted(map(key, a.values())) == sorted(map(key, b.values()))


# --------------------------------------------------------------------------- the command line

def parse_seeds(values: Sequence[str]) -> list[int]:
    seeds = []
    for value in " ".join(values).replace(",", " ").split():
        if not value.isdigit():
            raise BadInput(f"--seeds {value!r} is not a seed; give whole numbers >= 0, e.g. --seeds 0 1 2")
        seeds.append(int(value))
    if not seeds:
        raise BadInput("--seeds is empty; give at least one seed, e.g. --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise BadInput(f"--seeds {' '.join(values)} repeats a seed; list each seed once")
    return seeds


def parse_variants(values: Sequence[str]) -> list[str]:
    variants = " ".join(values).replace(",", " ").split()
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise BadInput(f"--variants {' '.join(bad) or '(empty)'}: not a peer variant; choose from {' '.join(VARIANTS)}")
    return list(dict.fromkeys(variants))


def writable_folder(value: str, flag: str) -> Path:
    path = Path(value).resolve()
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {value!r} is a file; give a folder (it is created if missing)")
    return path


def peer_child(argv: list[str]) -> int:
    """``peer.py _peer``: one peer run, in its own process (the parent measures its wall time)."""
    p = argparse.ArgumentParser(prog="peer.py _peer")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args(argv)
    run_peer(args.seed, args.variant, Path(args.out), Path(args.cache), args.sets)
    return 0


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # timed() ends the running side's processes on the way out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_peer"]:
        return peer_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="SEED",
                   help="seeds: each seeds both sides' model, data, sampling and training (default 0 1 2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                   help=f"peer variants to run: {', '.join(VARIANTS)} (default both)")
    p.add_argument("--out", default=str(ROOT / "results" / "peer"), help="where peer.md, peer.json and the runs go")
    p.add_argument("--cache", default=os.environ.get("HARNESS_CACHE") or str(ROOT / "results" / ".cache"),
                   help="the harness cache both sides read (default $HARNESS_CACHE, else results/.cache)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both sides, as `harness run --set` (repeatable)")
    p.add_argument("--rebuild", action="store_true",
                   help="run nothing: write the report again from the runs already in --out")
    args = p.parse_args(argv)
    try:
        seeds, variants = parse_seeds(args.seeds), parse_variants(args.variants)
        out, cache = writable_folder(args.out, "--out"), writable_folder(args.cache, "--cache")
        settings = Settings.of(load_config(seeds[0], args.sets))
    except BadInput as exc:
        p.exit(2, f"error: {exc}\n")
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminated)
    sides: list[Side] = []

    def save() -> str:
        text, data = build_report(settings, sides, variants)
        (out / "peer.md").write_text(text)
        (out / "peer.json").write_text(json.dumps(data, indent=2, default=str))
        return text

    if args.rebuild:
        saved = out / "peer.json"
        if saved.is_file() and json.loads(saved.read_text()).get("settings"):
            # the settings the runs were made with, not the ones the flags of this rebuild give
            stored = json.loads(saved.read_text())["settings"]
            settings = Settings(**{**stored, "bs_choices": tuple(stored["bs_choices"]),
                                   "wd_choices": tuple(stored["wd_choices"])})
        for seed in seeds:
            folder = out / f"seed-{seed}"
            if (folder / "harness" / OUTCOME).is_file():
                sides.append(read_harness_side(seed, folder / "harness"))
            sides += [read_peer_side(seed, v, folder / f"peer-{v}") for v in variants
                      if (folder / f"peer-{v}" / OUTCOME).is_file()]
        print(save())
        return 0 if sides and all(measured(s) for s in sides) else 1
    for seed in seeds:
        folder = out / f"seed-{seed}"
        try:
            ensure_cache(seed, cache, args.sets, folder / "prepare.out")
        except CacheMissing as exc:
            sides += [Side(name, seed, error=str(exc)) for name in ["harness", *(f"peer {v}" for v in variants)]]
            print(f"{time.strftime('%H:%M:%S')} seed {seed}: FAILED: {exc}", flush=True)
            save()
            continue
        runs = [("harness", lambda: run_harness_side(seed, folder / "harness", cache, args.sets))]
        runs += [(f"peer {v}", lambda v=v: run_peer_side(seed, v, folder / f"peer-{v}", cache, args.sets))
                 for v in variants]
        for name, run in runs:
            print(f"{time.strftime('%H:%M:%S')} seed {seed}: {name} ...", flush=True)
            side = run()
            sides.append(side)
            print(f"{time.strftime('%H:%M:%S')}   {fmt(side.wall_s, 0)} s, best eval_loss {fmt(side.best_eval_loss)}"
                  + (f", FAILED: {side.error}" if side.error else ""), flush=True)
            save()
    print(save())
    return 0 if all(measured(s) for s in sides) else 1


if __name__ == "__main__":
    sys.exit(main())
