"""The seed's sequential manual grid: one combination after another in this process, no Ray, no
scheduler deciding anything. Each combination trains for the full number of iterations through
the very same trial code the Ray strategies use.

Faults cost what Ray Tune's would: the latest checkpoint of the combination in flight is kept in
the run folder (``manual_checkpoints/<trial>``), a failed combination restarts from it up to
``tune.max_failures`` times, ``--resume`` skips the finished combinations and restarts the one
in flight from it, and SIGUSR1 stops the grid after the iteration in flight.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path

from harness.contract.iteration import HParams, Iteration, IterationReport
from harness.contract.record import Status
from harness import tasks
from harness.strategies import StrategyContext, StrategyResult
from harness.trial.checkpoint import META_FILE, Segment, restart_point

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """SIGUSR1 arrived: the iteration in flight is checkpointed and reported; the grid stops."""


def _node_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _keep(ckpt_dir: str, dest: Path) -> None:
    """The newest checkpoint of a combination replaces the previous one in one rename."""
    tmp = dest.with_name(f"{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt_dir, tmp)
    old = dest.with_name(f"{dest.name}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def run(ctx: StrategyContext) -> StrategyResult:
    cfg = ctx.cfg
    run_trial_segment = tasks.get(cfg.task).load()  # the task's trial body, in this process
    combos = cfg.search.grid(cfg.grid_lrs())
    ip = _node_ip()
    finished = {t.trial_id for t in ctx.previous.trials if t.status == Status.TERMINATED} if ctx.previous else set()
    checkpoints = ctx.run_dir.manual_checkpoints
    for index, hparams in enumerate(combos):
        trial_id = f"manual_{index:05d}"
        if trial_id in finished:
            continue
        if ctx.stop is not None and ctx.stop.is_set():  # asked to stop between two combinations
            log.warning("stopped before %s; continue with --resume %s", trial_id, ctx.run_dir)
            return StrategyResult(slots=1)
        name = (f"{trial_id}_lr={hparams['lr']:.3g},bs={hparams['per_device_train_batch_size']},"
                f"wd={hparams['weight_decay']:g}")
        hp = HParams.of(hparams)
        ctx.sinks.trial_started(trial_id, name, hp)
        kept = checkpoints / trial_id
        last = [time.time()]

        def report(done: IterationReport, ckpt_dir: str, trial_id: str = trial_id, kept: Path = kept) -> None:
            now = time.time()
            row = Iteration.from_metrics(done.metrics(), training_iteration=done.iteration, time_this_iter_s=now - last[0],
                                         node_ip=ip, pid=os.getpid(), received_at=now)
            last[0] = now
            _keep(ckpt_dir, kept)  # before the report: what was reported can always be continued
            ctx.sinks.trial_result(trial_id, row)
            if ctx.stop is not None and ctx.stop.is_set():
                raise StopRequested

        status, error, failures = Status.TERMINATED, "", 0
        log.info("manual grid %d/%d: %s", index + 1, len(combos), name)
        while True:
            workdir = Path(tempfile.mkdtemp(prefix=f"harness-{trial_id}-"))
            # after its kept checkpoint (a retry, a resume), or from the start
            start = restart_point(kept, workdir / "init", trial_id) if (kept / META_FILE).is_file() else {}
            seg = Segment(cfg=cfg, hparams=hp, model_path=ctx.model_path, data_path=ctx.data_path,
                          trial_id=trial_id, workdir=str(workdir), cache_dir=ctx.cache_dir, **start)
            last[0] = time.time()
            try:
                run_trial_segment(seg, report)
                break
            except StopRequested:
                log.warning("stopped after %s's last checkpoint; continue with --resume %s", name, ctx.run_dir)
                return StrategyResult(slots=1)
            except Exception:  # recorded and retried from the checkpoint; after max_failures: ERROR, exit 1
                error = traceback.format_exc()
                failures += 1
                if failures > cfg.tune.max_failures:
                    status = Status.ERROR
                    log.error("%s failed %d times:\n%s", name, failures, error)
                    break
                ctx.sinks.trial_retried(trial_id, error)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        ctx.sinks.trial_ended(trial_id, status, error if status != Status.TERMINATED else "")
        if status == Status.TERMINATED:
            shutil.rmtree(kept, ignore_errors=True)  # done: only the combination in flight keeps one
    return StrategyResult(slots=1)
