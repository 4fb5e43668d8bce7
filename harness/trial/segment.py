"""One training segment of a trial: fine-tune a causal LM with the HF ``Trainer`` from a starting
checkpoint for the remaining iterations, reporting after each evaluation.

One iteration = one epoch (or ``train.steps_per_iteration`` optimizer steps), then one
evaluation, one checkpoint and one report (:class:`~harness.contract.iteration.IterationReport`).
A trial is one segment, or several when PBT restarts it from another trial's checkpoint, a retry
restarts it from its own, or a resume continues it.

The PBT resume trap: ``trainer.train(resume_from_checkpoint=...)`` restores the donor's optimizer
*and LR scheduler*, so a mutated lr is silently ignored, and a batch-size change breaks epoch
accounting. A checkpoint here therefore holds only the weights plus our own metadata (iteration
count, the hyperparameters that produced it, the trial that wrote it); every segment builds a
fresh Trainer with the trial's *current* lr / batch size / weight decay for exactly the remaining
iterations. The optimizer's moments are not carried over (PBT's papers reset them too).

Who runs a segment: :mod:`harness.trial.ranks` (in this process, or as torch.distributed
ranks), called by the Ray Tune adapter (:mod:`harness.strategies.tune_adapter`), the manual grid
and ``make gpu-check``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from harness.contract.iteration import (
    SETUP_PHASES,
    IterationReport,
    checkpoint_name,
)
from harness.trial import faults, process
from harness.trial.checkpoint import META_FILE, MODEL_DIR, Reporter, Segment, TrialError
from harness.trial.data import PadCollator, TokenizedDataset, load_prepared
from harness.trial.deepspeed import zero_config
from harness.trial.model import load_model, load_tokenizer


def training_arguments(seg: Segment, *, distributed: bool) -> TrainingArguments:
    """The Trainer's arguments for the segment: the trial's current hyperparameters, exactly the
    remaining iterations, no checkpoints of the Trainer's own (see the module docstring)."""
    cfg, t = seg.cfg, seg.cfg.train
    use_cpu = not (cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available())
    per_iteration: dict[str, Any]
    if t.steps_per_iteration:
        per_iteration = dict(
            max_steps=seg.remaining * t.steps_per_iteration,
            eval_strategy="steps", eval_steps=t.steps_per_iteration,
            logging_strategy="steps", logging_steps=t.steps_per_iteration,
        )
    else:
        per_iteration = dict(num_train_epochs=seg.remaining, eval_strategy="epoch", logging_strategy="epoch")
    return TrainingArguments(
        output_dir=str(Path(seg.workdir) / "hf"),
        learning_rate=float(seg.hparams.lr),
        per_device_train_batch_size=int(seg.hparams.per_device_train_batch_size),
        weight_decay=float(seg.hparams.weight_decay),
        per_device_eval_batch_size=t.eval_batch_size,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        save_strategy="no",  # checkpoints are ours: weights + metadata, see the module docstring
        # A different, still deterministic, shuffle for every segment of a trial.
        seed=cfg.seed + seg.start_iteration,
        use_cpu=use_cpu,
        fp16=t.fp16,
        bf16=t.bf16,
        deepspeed=zero_config(t.deepspeed_stage) if t.deepspeed else None,
        ddp_backend=("gloo" if use_cpu else "nccl") if distributed else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **per_iteration,
    )


class Clock:
    """Where the segment's time goes: :meth:`lap` charges the time since the last lap to a phase."""

    def __init__(self, measured: Mapping[str, float]):
        self.phases = dict(measured)
        self.last = time.time()

    def lap(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now


class IterationCallback(TrainerCallback):
    """After each evaluation: a checkpoint (on every rank: ZeRO-3 gathers the weights), then, on
    rank 0, one report with where the iteration's time went."""

    def __init__(self, seg: Segment, report: Reporter, clock: Clock, *, rank: int):
        self.seg, self.report, self.clock, self.rank = seg, report, clock, rank
        self.trainer: Trainer | None = None
        self.done = 0
        self.train_loss = float("nan")
        self.boundary = 0.0  # end of the previous iteration (or of the set-up)
        self.last_report_s = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.clock.lap("setup")
        self.boundary = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.train_loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kw: Any) -> None:
        assert self.trainer is not None and metrics is not None
        evaluated = time.time()
        self.done += 1
        seg = self.seg
        iteration = seg.start_iteration + self.done
        ckpt_dir = Path(tempfile.mkdtemp(prefix=f"ckpt{iteration}-", dir=seg.workdir)) if self.rank == 0 else None
        self.trainer.save_model(str((ckpt_dir or Path(seg.workdir) / "unused") / MODEL_DIR))
        if ckpt_dir is None:
            return
        faults.maybe_fail(seg.trial_id, iteration)
        eval_s = float(metrics.get("eval_runtime") or 0.0)
        timing = {"train": max(0.0, evaluated - self.boundary - eval_s), "eval": eval_s,
                  "checkpoint": time.time() - evaluated, "report": self.last_report_s}
        # the set-up belongs to a segment's first iteration; every row names every phase
        timing.update({p: self.clock.phases.get(p, 0.0) if self.done == 1 else 0.0 for p in SETUP_PHASES})
        done = self._report(iteration, float(metrics["eval_loss"]), float(state.epoch or 0), args, timing)
        (ckpt_dir / META_FILE).write_text(json.dumps({
            "trial_id": seg.trial_id, "iteration": iteration, "planned_iterations": seg.cfg.train.iterations,
            "hparams": seg.hparams.as_dict(), "eval_loss": done.eval_loss, "epoch": done.epoch,
            "written_at": time.time(),
        }, indent=2))
        started = time.time()
        try:
            self.report(done, str(ckpt_dir))
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        self.boundary = time.time()
        self.last_report_s = self.boundary - started

    def _report(self, iteration: int, eval_loss: float, epochs: float, args: Any,
                timing: dict[str, float]) -> IterationReport:
        seg, optimizer = self.seg, self.trainer.optimizer  # type: ignore[union-attr]
        hp = seg.hparams
        return IterationReport(
            iteration=iteration,
            planned_iterations=seg.cfg.train.iterations,
            eval_loss=eval_loss,
            train_loss=self.train_loss,
            epoch=float(seg.epochs_before) + epochs,
            lr=float(hp.lr),
            per_device_train_batch_size=int(hp.per_device_train_batch_size),
            weight_decay=float(hp.weight_decay),
            optimizer_lr=float(optimizer.param_groups[0]["lr"]),
            optimizer_weight_decay=float(optimizer.param_groups[0].get("weight_decay", 0.0)),
            world_size=int(args.world_size),
            effective_batch_size=int(hp.per_device_train_batch_size) * int(args.world_size),
            deepspeed=bool(self.trainer.is_deepspeed_enabled),  # type: ignore[union-attr]
            peak_gpu_memory_mib=0.0 if args.use_cpu else torch.cuda.max_memory_allocated() / 2**20,
            segment_start_iteration=seg.start_iteration,
            exploited_from=seg.exploited_from if self.done == 1 else "",
            started_from=(checkpoint_name(seg.exploited_from or seg.trial_id, seg.start_iteration) if self.done == 1
                          else checkpoint_name(seg.trial_id, iteration - 1)),
            phases={p: round(v, 4) for p, v in timing.items()},
        )


def run_segment(seg: Segment, report: Reporter, *, rank: int = 0, world_size: int = 1) -> None:
    """Train from ``seg.start_iteration`` to the planned iterations; ``report`` is called on rank 0
    after each one."""
    clock = Clock(seg.setup_phases)
    process.set_threads(seg.cfg.resources.cpus_per_worker)
    process.freeze_imports()
    clock.lap("imports")  # ~0 in a process that ran a segment before
    if seg.remaining <= 0:
        return
    hf_logging.disable_progress_bar()  # per-checkpoint "Writing model shards" bars in every log
    tokenizer = load_tokenizer(seg.model_path)
    model = load_model(seg.init_weights or seg.model_path)
    clock.lap("model_load")
    prepared = load_prepared(seg.data_path)
    clock.lap("data_load")
    callback = IterationCallback(seg, report, clock, rank=rank)
    trainer = Trainer(
        model=model,
        args=training_arguments(seg, distributed=world_size > 1),
        train_dataset=TokenizedDataset(prepared.splits["train"]),
        eval_dataset=TokenizedDataset(prepared.splits["validation"]),
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the per-step dicts drown Tune's own status table
    callback.trainer = trainer
    trainer.train()
    if callback.done != seg.remaining:
        raise TrialError(
            f"trial {seg.trial_id} trained {callback.done} iterations instead of {seg.remaining} "
            f"(from {seg.start_iteration} to {seg.cfg.train.iterations})"
        )
