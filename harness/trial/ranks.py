"""Who runs a segment: this process for one plain worker, or W torch.distributed ranks.

Why a trial owns its workers (Ray 2.60 / transformers 5.x, measured here): a plain Tune function
trainable driving the Trainer was ~1.6x faster than ``TorchTrainer`` inside a ``Tuner``
(deprecated since Ray 2.43, needs ``RAY_TRAIN_V2_ENABLED=0``); Ray Train V2 inside a Tune
function deadlocks under PBT; ``ray.train.report`` raises inside a Tune function. So with W > 1
(or DeepSpeed, which needs the process-group environment even for one rank) the trial launches W
ranks (gloo on CPU, NCCL on GPU) inside the single placement-group bundle Ray reserved for it,
and relays rank 0's reports.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from pathlib import Path
from typing import Any

import torch

from harness.contract.iteration import IterationReport
from harness.trial import process, sysmon
from harness.trial.checkpoint import Reporter, Segment, TrialError
from harness.trial.segment import run_segment


def run_trial_segment(seg: Segment, report: Reporter) -> None:
    """In this process for one plain worker; as torch.distributed ranks for W > 1 or DeepSpeed.

    The trial's use of the machine (:mod:`harness.trial.sysmon`) is measured here, in the trial
    process, whichever runs: W ranks are its children, so one sampler sees them all (and runs
    beside them, not inside rank 0's training loop), and each report is stamped as it leaves for
    Ray, at the boundaries Ray's ``time_this_iter_s`` is measured between."""
    r = seg.cfg.resources
    world = r.workers_per_trial
    with sysmon.Monitor(cpus_reserved=r.cpus_per_worker * world, gpus_reserved=r.gpus_per_worker * world) as monitor:

        def stamped(done: IterationReport, ckpt_dir: str) -> None:
            report(monitor.stamp(done), ckpt_dir)

        if world == 1 and not seg.cfg.train.deepspeed:
            run_segment(seg, stamped)
        else:
            run_distributed(seg, world, stamped)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(seg: Segment, rank: int, world_size: int, port: int, conn: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo)
    if seg.cache_dir:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(seg.cache_dir) / "torch_extensions"))
    process.set_threads(seg.cfg.resources.cpus_per_worker)

    def relay(report: IterationReport, ckpt_dir: str) -> None:
        conn.send(("report", report, ckpt_dir))
        conn.recv()  # wait until the reporter kept the checkpoint before it is deleted

    run_segment(seg, relay if rank == 0 else (lambda r, d: None), rank=rank, world_size=world_size)
    if conn is not None:
        conn.send(("done", None, None))


def run_distributed(seg: Segment, world_size: int, report: Reporter, poll_s: float = 0.5) -> None:
    """Run ``seg`` on ``world_size`` torch.distributed ranks; rank 0's reports go to ``report``."""
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
                kind, done, ckpt_dir = parent.recv()
                if kind == "report":
                    report(done, ckpt_dir)
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
