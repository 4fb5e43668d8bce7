"""What the torch-free analytic tasks (the known-answer controls) share: a trial body that steps
a small state forward one iteration at a time, reports it, and checkpoints it as JSON in the
harness's checkpoint layout, so that every strategy (PBT's exploits included), retries and
resumes treat it exactly like a model's weights."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from harness.contract.iteration import SETUP_PHASES, IterationReport, checkpoint_name
from harness.trial import faults
from harness.trial.checkpoint import META_FILE, MODEL_DIR, Reporter, Segment

STATE_FILE = "state.json"

#: ``step(state, lr, rng, seg) -> (new state, eval_loss, train_loss)``: one iteration of a task.
Step = Callable[[Mapping[str, float], float, random.Random, Segment], tuple[dict[str, float], float, float]]


def noise(seg: Segment, iteration: int) -> random.Random:
    """The iteration's own random stream: the run's seed, the trial, the iteration and where the
    segment started (a rerun of an iteration after a fault draws again, as a GPU would)."""
    return random.Random(f"{seg.cfg.seed}/{seg.trial_id}/{iteration}/{seg.start_iteration}/{seg.exploited_from}")


def run(seg: Segment, report: Reporter, step: Step, initial: Mapping[str, float]) -> None:
    """Train ``seg`` from its start to the planned iterations with ``step``, reporting each one."""
    started = time.time()
    state: dict[str, float] = dict(initial)
    if seg.init_weights:
        state = json.loads((Path(seg.init_weights) / STATE_FILE).read_text())
    setup = {**{p: 0.0 for p in SETUP_PHASES}, **seg.setup_phases, "setup": time.time() - started}
    last_report = 0.0
    for done, iteration in enumerate(range(seg.start_iteration + 1, seg.cfg.train.iterations + 1), start=1):
        begun = time.time()
        state, eval_loss, train_loss = step(state, float(seg.hparams.lr), noise(seg, iteration), seg)
        trained = time.time()
        ckpt = Path(tempfile.mkdtemp(prefix=f"ckpt{iteration}-", dir=seg.workdir))
        (ckpt / MODEL_DIR).mkdir()
        (ckpt / MODEL_DIR / STATE_FILE).write_text(json.dumps(state))
        (ckpt / META_FILE).write_text(json.dumps({
            "trial_id": seg.trial_id, "iteration": iteration, "planned_iterations": seg.cfg.train.iterations,
            "hparams": seg.hparams.as_dict(), "eval_loss": eval_loss, "epoch": float(iteration), "written_at": time.time(),
        }))
        phases = {"train": trained - begun, "eval": 0.0, "checkpoint": time.time() - trained, "report": last_report,
                  **{p: (v if done == 1 else 0.0) for p, v in setup.items()}}
        faults.maybe_fail(seg.trial_id, iteration)  # the fault-injection hook the LM trial has too
        reporting = time.time()
        try:
            report(_report(seg, iteration, done, eval_loss, train_loss, phases), str(ckpt))
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        last_report = time.time() - reporting


def _report(seg: Segment, iteration: int, done: int, eval_loss: float, train_loss: float,
            phases: dict[str, float]) -> IterationReport:
    hp = seg.hparams
    return IterationReport(
        iteration=iteration, planned_iterations=seg.cfg.train.iterations, eval_loss=eval_loss, train_loss=train_loss,
        epoch=float(iteration), lr=float(hp.lr), per_device_train_batch_size=int(hp.per_device_train_batch_size),
        weight_decay=float(hp.weight_decay), optimizer_lr=float(hp.lr), optimizer_weight_decay=float(hp.weight_decay),
        world_size=1, effective_batch_size=int(hp.per_device_train_batch_size), deepspeed=False,
        peak_gpu_memory_mib=0.0, segment_start_iteration=seg.start_iteration,
        exploited_from=seg.exploited_from if done == 1 else "",
        started_from=(checkpoint_name(seg.exploited_from or seg.trial_id, seg.start_iteration) if done == 1
                      else checkpoint_name(seg.trial_id, iteration - 1)),
        phases={p: round(v, 6) for p, v in phases.items()},
    )



#: The controls' default space and budget: the learning rate alone over one decade, 12 trials x 8
#: iterations (the grid: 12 learning rates), on 4 slots of half a CPU each (a step costs
#: microseconds; Ray Tune's own bookkeeping and the trial processes' start are the run's cost),
#: synchronous PBT exploiting the bottom quarter every iteration.
CONTROL_DEFAULTS = {
    "search.lr_lower": 0.01, "search.lr_upper": 0.1, "search.bs_choices": (1,), "search.wd_choices": (0.0,),
    "train.iterations": 8, "budget.trial_iterations": 96, "budget.slots": 4,
    "resources.cpus_per_worker": 0.5, "tune.synch": True, "tune.quantile_fraction": 0.25,
}
