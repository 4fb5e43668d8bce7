"""Several runs in one driver: every (strategy, seed) of a comparison, one after another, in one
process and one Ray session.

A run started on its own pays, before its first trial iteration, for the interpreter, the imports
(Ray, MLflow, the trainer) and a new Ray instance with its worker pool; on 2 cores that fixed cost
was most of a smoke run. Here it is paid once: the imports stay, the Ray session (local, sized for
the runs' slots) stays up between runs, and each run is otherwise exactly what ``harness run``
does (its own run folder, event log, record, tables and MLflow runs; ``--resume`` continues any
of them alone).

A stop request (SIGUSR1 before a time limit) stops the run in flight the usual way and starts no
further run; the driver prints what to resume and what never started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.cluster import stop
from harness.config import ExperimentConfig
from harness.driver import runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRun:
    cfg: ExperimentConfig
    outcome: runner.Outcome | None
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.cfg.strategy} seed {self.cfg.seed}"


def bench(configs: Sequence[ExperimentConfig], *, ray_address: str = "local", verbose: bool = False,
          tracking: bool = True, progress: Callable[[BenchRun], None] | None = None) -> list[BenchRun]:
    """Run every config in order in this process; stops starting new ones once a stop was asked for
    or a run ended stopped (Ray Tune takes SIGUSR1 itself while it runs, so the record is what
    says so): the runs not started are returned with no outcome."""
    done: list[BenchRun] = []
    for cfg in configs:
        if stop.requested() or any(r.outcome is not None and r.outcome.record.stopped for r in done):
            done.append(BenchRun(cfg, None, 0.0))
            continue
        started = time.time()
        try:
            outcome = runner.run(cfg, ray_address=ray_address, verbose=verbose, tracking=tracking)
        except runner.RunStopped:
            done.append(BenchRun(cfg, None, time.time() - started))
            continue
        run = BenchRun(cfg, outcome, time.time() - started)
        done.append(run)
        if progress is not None:
            progress(run)
    return done
