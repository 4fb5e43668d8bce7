"""The seed's sequential manual grid: one combination after another in this process, no Ray, no
scheduler deciding anything. Each combination trains for the full number of iterations through
the very same trial code the Ray strategies use."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from harness.strategies import StrategyContext, StrategyResult
from harness.train import Segment, run_trial_segment

log = logging.getLogger(__name__)


def _node_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def run(ctx: StrategyContext) -> StrategyResult:
    cfg = ctx.cfg
    combos = cfg.search.grid(cfg.grid_lrs())
    ip = _node_ip()
    for index, hparams in enumerate(combos):
        trial_id = f"manual_{index:05d}"
        name = (f"{trial_id}_lr={hparams['lr']:.3g},bs={hparams['per_device_train_batch_size']},"
                f"wd={hparams['weight_decay']:g}")
        for sink in ctx.sinks:
            sink.trial_started(trial_id, name, hparams)
        workdir = Path(tempfile.mkdtemp(prefix=f"harness-{trial_id}-"))
        last = [time.time()]

        def report(metrics: dict[str, Any], ckpt_dir: str, trial_id: str = trial_id) -> None:
            now = time.time()
            row = {**metrics, "training_iteration": metrics["iteration"], "time_this_iter_s": now - last[0],
                   "node_ip": ip}
            last[0] = now
            for sink in ctx.sinks:
                sink.trial_result(trial_id, row)

        seg = Segment(experiment=cfg.to_dict(), hparams=hparams, model_path=ctx.model_path,
                      data_path=ctx.data_path, trial_id=trial_id, workdir=str(workdir), cache_dir=ctx.cache_dir)
        status, error = "TERMINATED", ""
        log.info("manual grid %d/%d: %s", index + 1, len(combos), name)
        try:
            run_trial_segment(seg, report)
        except Exception:  # one failed combination must not cost the others: recorded, reported, exit 1
            status, error = "ERROR", traceback.format_exc()
            log.error("%s failed:\n%s", name, error)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        for sink in ctx.sinks:
            sink.trial_ended(trial_id, status, error)
    return StrategyResult(slots=1)
