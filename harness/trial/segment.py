"""The trial: fine-tune a causal LM with the HF ``Trainer`` and report ``eval_loss`` to Ray Tune.

Why a plain Tune *function trainable* drives the Trainer (Ray 2.60 / transformers 5.x, measured
here): it was ~1.6x faster than ``TorchTrainer`` inside a ``Tuner`` (deprecated since Ray 2.43,
needs ``RAY_TRAIN_V2_ENABLED=0``); Ray Train V2 inside a Tune function deadlocks under PBT; and
``ray.train.report``/``RayTrainReportCallback`` raise inside a Tune function. So the trial itself
owns its workers: with W = 1 the Trainer runs in the trial's process; with W > 1 the trial
launches W torch.distributed ranks (gloo on CPU, NCCL on GPU) inside the single placement-group
bundle Ray reserved for it, and relays rank 0's reports to Tune.

One Tune iteration = one epoch (or ``train.steps_per_iteration`` optimizer steps) followed by one
evaluation, one checkpoint and one ``tune.report``.

The PBT resume trap: ``trainer.train(resume_from_checkpoint=...)`` restores the donor's optimizer
*and LR scheduler*, so a mutated lr is silently ignored, and a batch-size change breaks epoch
accounting. A checkpoint here therefore holds only the weights plus our own metadata (iteration
count, the hyperparameters that produced it, the trial that wrote it); every segment builds a
fresh Trainer with the trial's *current* lr / batch size / weight decay for exactly the remaining
iterations. The optimizer's moments are not carried over (PBT's papers reset them too).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig

log = logging.getLogger(__name__)

META_FILE = "harness_trial.json"
MODEL_DIR = "model"
#: Ray config keys searched/mutated by the strategies, mapped to TrainingArguments names.
HPARAMS = ("lr", "per_device_train_batch_size", "weight_decay")

Reporter = Callable[[dict[str, Any], str], None]

#: Where a trial segment's time goes, recorded per iteration as ``phase_<name>_s``. The first
#: iteration of a segment carries the set-up phases (process start up to the trial function, the
#: imports, restoring a checkpoint, loading model and data, building the Trainer); every iteration
#: carries train, eval, checkpoint save, and the previous iteration's report (Ray counts a report's
#: cost in the next iteration's ``time_this_iter_s``). ``process_up`` lies before Ray's clock
#: starts; the others add up to ``time_this_iter_s`` up to a few milliseconds.
SETUP_PHASES = ("process_up", "imports", "restore", "model_load", "data_load", "setup")
ITERATION_PHASES = ("train", "eval", "checkpoint", "report")
PHASES = SETUP_PHASES + ITERATION_PHASES
PURE_PHASES = ("train", "eval")


def phase_key(phase: str) -> str:
    return f"phase_{phase}_s"


def _process_started_here() -> float:
    """Seconds from this process's creation to now, the first time it is asked; 0 afterwards (a
    reused Ray actor, or the driver itself, paid no process start for this segment)."""
    global _PROCESS_CLAIMED
    if _PROCESS_CLAIMED:
        return 0.0
    _PROCESS_CLAIMED = True
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


_PROCESS_CLAIMED = False
_FROZEN = False


def _freeze_imports() -> None:
    """Move the objects of the imported modules out of the garbage collector's reach, once per
    process. The Trainer runs a full ``gc.collect()`` at the start of every ``train()``
    (accelerate's ``free_memory``); over torch's and transformers' module objects that took 0.2 s,
    as long as a tiny model's whole epoch, in every trial segment (measured with cProfile)."""
    global _FROZEN
    if not _FROZEN:
        import gc

        gc.freeze()
        _FROZEN = True


class TrialError(RuntimeError):
    """A trial's worker failed; the message says which rank and how."""


@dataclass(frozen=True)
class Segment:
    """Everything one training segment needs; picklable, so ranks can receive it."""

    experiment: dict[str, Any]
    hparams: dict[str, Any]
    model_path: str
    data_path: str
    trial_id: str
    workdir: str
    start_iteration: int = 0
    init_weights: str = ""  # a checkpoint's model folder, empty for the base model
    exploited_from: str = ""  # the donor trial, when this segment starts from its checkpoint
    epochs_before: float = 0.0  # epochs trained into ``init_weights`` (batch sizes may differ)
    cache_dir: str = ""  # where DeepSpeed may build ops (TORCH_EXTENSIONS_DIR)
    setup_phases: tuple[tuple[str, float], ...] = ()  # phases measured before run_segment (process_up, restore)


def deepspeed_config(stage: int) -> dict[str, Any]:
    """A ZeRO config with ``"auto"`` values that the HF Trainer fills (batch sizes, lr, clipping).

    No optimizer section: the Trainer's own torch AdamW is used (DeepSpeed's own AdamW JIT-compiles
    ops for a minute on first use). ``fp16``/``bf16`` stay ``"auto"``: the Trainer's flags decide.
    """
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "offload_optimizer": {"device": "none"},
        "offload_param": {"device": "none"},
    }
    if stage == 3:  # save_model() must gather the sharded weights into one checkpoint
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto"},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def _training_arguments(cfg: ExperimentConfig, seg: Segment, remaining: int, distributed: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    use_cpu = not (cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available())
    per_iteration: dict[str, Any]
    if t.steps_per_iteration:
        per_iteration = dict(
            max_steps=remaining * t.steps_per_iteration,
            eval_strategy="steps", eval_steps=t.steps_per_iteration,
            logging_strategy="steps", logging_steps=t.steps_per_iteration,
        )
    else:
        per_iteration = dict(num_train_epochs=remaining, eval_strategy="epoch", logging_strategy="epoch")
    return TrainingArguments(
        output_dir=str(Path(seg.workdir) / "hf"),
        learning_rate=float(seg.hparams["lr"]),
        per_device_train_batch_size=int(seg.hparams["per_device_train_batch_size"]),
        weight_decay=float(seg.hparams["weight_decay"]),
        per_device_eval_batch_size=t.eval_batch_size,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        save_strategy="no",  # checkpoints are ours: weights + metadata, see the module docstring
        # A different, still deterministic, shuffle for every segment of a trial.
        seed=cfg.seed + seg.start_iteration,
        use_cpu=use_cpu,
        fp16=t.fp16,
        bf16=t.bf16,
        deepspeed=deepspeed_config(t.deepspeed_stage) if t.deepspeed else None,
        ddp_backend=("gloo" if use_cpu else "nccl") if distributed else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **per_iteration,
    )


#: Tests only, never set in production: ``<trial>:<iteration>:<raise|kill>`` makes that trial
#: (``c02`` or its full id) fail once at that iteration, after its evaluation and before its
#: report, by raising or by SIGKILLing its own process. ``HARNESS_FAULT_DIR`` (required with it)
#: holds the marker that makes it once: the retry from the last checkpoint passes.
FAULT_ENV, FAULT_DIR_ENV = "HARNESS_FAULT", "HARNESS_FAULT_DIR"


class InjectedFault(RuntimeError):
    """The failure HARNESS_FAULT asked for."""


def inject_fault(trial_id: str, iteration: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    from harness.contract.record import short_id

    who, at, action = spec.split(":")
    if who not in (trial_id, short_id(trial_id)) or int(at) != iteration:
        return
    marker = Path(os.environ[FAULT_DIR_ENV]) / f"{short_id(trial_id)}-{trial_id}-{iteration}"
    try:
        marker.touch(exist_ok=False)  # once: the retry finds the marker and carries on
    except FileExistsError:
        return
    log.warning("%s: injected fault at iteration %d (%s)", trial_id, iteration, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"{FAULT_ENV}={spec}: trial {trial_id} fails at iteration {iteration}")


def _peak_gpu_memory_mib(args: Any) -> float:
    """The most GPU memory this process has held so far (0 on CPU)."""
    import torch

    return 0.0 if args.use_cpu else torch.cuda.max_memory_allocated() / 2**20


def run_segment(seg: Segment, report: Reporter, *, rank: int = 0, world_size: int = 1) -> None:
    """Train from ``seg.start_iteration`` to the planned iterations, calling ``report`` per iteration.

    ``report(metrics, checkpoint_dir)`` is called on rank 0 only; the folder is removed after it
    returns, so the reporter must copy what it keeps (``tune.report`` does).
    """
    clock = time.time()
    phases = dict(seg.setup_phases)

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.time()
        phases[phase] = phases.get(phase, 0.0) + now - clock
        clock = now

    from transformers import PrinterCallback, Trainer, TrainerCallback
    from transformers.utils import logging as hf_logging

    from harness.trial.data import PadCollator, TokenizedDataset, load_prepared
    from harness.trial.model import load_model, load_tokenizer

    cfg = ExperimentConfig.from_dict(seg.experiment)
    _set_threads(cfg)
    _freeze_imports()
    lap("imports")  # ~0 in a process that ran a segment before
    remaining = cfg.train.iterations - seg.start_iteration
    if remaining <= 0:
        return
    hf_logging.disable_progress_bar()  # per-checkpoint "Writing model shards" bars in every log
    tokenizer = load_tokenizer(seg.model_path)
    model = load_model(seg.init_weights or seg.model_path)
    lap("model_load")
    prepared = load_prepared(seg.data_path)
    lap("data_load")
    args = _training_arguments(cfg, seg, remaining, distributed=world_size > 1)
    epochs_before = float(seg.epochs_before)

    class IterationCallback(TrainerCallback):
        """After each evaluation: checkpoint (all ranks), then report (rank 0)."""

        def __init__(self) -> None:
            self.done = 0
            self.train_loss = float("nan")
            self.trainer: Any = None
            self.boundary = 0.0  # end of the previous iteration (or of the set-up)
            self.last_report_s = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            lap("setup")
            self.boundary = time.time()

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.train_loss = float(logs["loss"])

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None, **kw: Any) -> None:
            evaluated = time.time()
            self.done += 1
            iteration = seg.start_iteration + self.done
            optimizer = self.trainer.optimizer
            ckpt_dir = Path(tempfile.mkdtemp(prefix=f"ckpt{iteration}-", dir=seg.workdir)) if rank == 0 else None
            # every rank takes part (ZeRO-3 gathers the weights); only rank 0 writes
            target = ckpt_dir if ckpt_dir is not None else Path(seg.workdir) / "unused"
            self.trainer.save_model(str(target / MODEL_DIR))
            if rank != 0:
                return
            inject_fault(seg.trial_id, iteration)
            eval_s = float(metrics.get("eval_runtime") or 0.0)
            timing = {
                "train": max(0.0, evaluated - self.boundary - eval_s),
                "eval": eval_s,
                "checkpoint": time.time() - evaluated,
                "report": self.last_report_s,
            }
            if self.done == 1:
                timing.update({p: phases.get(p, 0.0) for p in SETUP_PHASES})
            out = {
                "eval_loss": float(metrics["eval_loss"]),
                "train_loss": self.train_loss,
                "iteration": iteration,
                "planned_iterations": cfg.train.iterations,
                # epochs of training behind this checkpoint (fractional when iterating by steps)
                "epoch": epochs_before + float(state.epoch or 0),
                "lr": float(seg.hparams["lr"]),
                "per_device_train_batch_size": int(seg.hparams["per_device_train_batch_size"]),
                "weight_decay": float(seg.hparams["weight_decay"]),
                # what the optimizer really used: the test of the PBT resume trap reads this
                "optimizer_lr": float(optimizer.param_groups[0]["lr"]),
                "optimizer_weight_decay": float(optimizer.param_groups[0].get("weight_decay", 0.0)),
                # from the Trainer itself: proves the ranks really formed one process group
                "world_size": int(args.world_size),
                "effective_batch_size": int(seg.hparams["per_device_train_batch_size"]) * int(args.world_size),
                "deepspeed": bool(self.trainer.is_deepspeed_enabled),
                "peak_gpu_memory_mib": _peak_gpu_memory_mib(args),
                "segment_start_iteration": seg.start_iteration,
                "exploited_from": seg.exploited_from if self.done == 1 else "",
                **{phase_key(p): round(v, 4) for p, v in timing.items()},
            }
            meta = {
                "trial_id": seg.trial_id,
                "iteration": iteration,
                "planned_iterations": cfg.train.iterations,
                "hparams": dict(seg.hparams),
                "eval_loss": out["eval_loss"],
                "epoch": out["epoch"],
                "written_at": time.time(),
            }
            (ckpt_dir / META_FILE).write_text(json.dumps(meta, indent=2))
            started = time.time()
            try:
                report(out, str(ckpt_dir))
            finally:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            self.boundary = time.time()
            self.last_report_s = self.boundary - started

    callback = IterationCallback()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TokenizedDataset(prepared.splits["train"]),
        eval_dataset=TokenizedDataset(prepared.splits["validation"]),
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the per-step dicts drown Tune's own status table
    callback.trainer = trainer
    trainer.train()
    if callback.done != remaining:
        raise TrialError(
            f"trial {seg.trial_id} trained {callback.done} iterations instead of {remaining} "
            f"(from {seg.start_iteration} to {cfg.train.iterations})"
        )


# --------------------------------------------------------------------------- W > 1 ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(seg: Segment, rank: int, world_size: int, port: int, conn: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo)
    if seg.cache_dir:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(seg.cache_dir) / "torch_extensions"))
    _set_threads(ExperimentConfig.from_dict(seg.experiment))

    def relay(metrics: dict[str, Any], ckpt_dir: str) -> None:
        conn.send(("report", metrics, ckpt_dir))
        conn.recv()  # wait until Tune persisted the checkpoint before it is deleted

    run_segment(seg, relay if rank == 0 else (lambda m, d: None), rank=rank, world_size=world_size)
    if conn is not None:
        conn.send(("done", None, None))


def run_distributed(seg: Segment, world_size: int, report: Reporter, poll_s: float = 0.5) -> None:
    """Run ``seg`` on ``world_size`` torch.distributed ranks; rank 0's reports go to ``report``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(seg, r, world_size, port, child if r == 0 else None),
                    name=f"{seg.trial_id}-rank{r}", daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    try:
        finished = False
        while not finished:
            if parent.poll(poll_s):
                kind, metrics, ckpt_dir = parent.recv()
                if kind == "report":
                    report(metrics, ckpt_dir)
                    parent.send("ack")
                else:
                    finished = True
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed:
                raise TrialError(
                    f"trial {seg.trial_id}: "
                    + ", ".join(f"{p.name} exited with code {p.exitcode}" for p in failed)
                )
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise TrialError(f"trial {seg.trial_id}: {p.name} exited with code {p.exitcode}")
    finally:  # also on SystemExit, which Tune raises in report() when it stops the trial
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# --------------------------------------------------------------------------- Tune entry point

def _set_threads(cfg: ExperimentConfig) -> None:
    import torch

    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))


def _tune_report(metrics: dict[str, Any], ckpt_dir: str) -> None:
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))


def run_trial_segment(seg: Segment, report: Reporter) -> None:
    """In this process for one plain worker; as torch.distributed ranks for W > 1 or DeepSpeed
    (which needs the process-group environment even for a single rank)."""
    cfg = ExperimentConfig.from_dict(seg.experiment)
    world = cfg.resources.workers_per_trial
    if world == 1 and not cfg.train.deepspeed:
        run_segment(seg, report)
    else:
        run_distributed(seg, world, report)


def trainable(
    config: dict[str, Any], *, experiment: dict[str, Any], model_path: str, data_path: str, cache_dir: str = ""
) -> None:
    """Ray Tune function trainable (bind the keyword arguments with ``tune.with_parameters``)."""
    from ray import tune

    process_up = _process_started_here()
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"harness-{trial_id}-"))
    # PB2 proposes continuous batch sizes; explored values stay inside the user's space
    hparams = ExperimentConfig.from_dict(experiment).search.clip({k: config[k] for k in HPARAMS})
    try:
        start, init_weights, donor, epochs_before = 0, "", "", 0.0
        restoring = time.time()
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                meta = json.loads((Path(d) / META_FILE).read_text())
                # copy the weights out: Tune may delete old checkpoints while we train
                shutil.copytree(Path(d) / MODEL_DIR, workdir / "init")
            start, init_weights = int(meta["iteration"]), str(workdir / "init")
            epochs_before = float(meta["epoch"])
            donor = meta["trial_id"] if meta["trial_id"] != trial_id else ""
            if donor:
                log.info("%s: exploiting %s at iteration %d with %s", trial_id, donor, start, hparams)
        seg = Segment(
            experiment=experiment, hparams=hparams, model_path=model_path, data_path=data_path,
            trial_id=trial_id, workdir=str(workdir), start_iteration=start,
            init_weights=init_weights, exploited_from=donor, epochs_before=epochs_before, cache_dir=cache_dir,
            setup_phases=(("process_up", process_up), ("restore", time.time() - restoring)),
        )
        run_trial_segment(seg, _tune_report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

