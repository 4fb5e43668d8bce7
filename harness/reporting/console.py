"""The console: one line per reported iteration, instead of Ray's trial table."""

from __future__ import annotations

import logging
import math

from harness.contract.iteration import Iteration
from harness.contract.record import Status, short_id
from harness.contract.sink import Sink


def _last_line(error: str) -> str:
    return error.strip().splitlines()[-1] if error.strip() else "no error message"


class Progress(Sink):
    """How much of the budget is spent, the trial, its metric and hyperparameters, the checkpoint
    it was exploited from, and the best so far."""

    def __init__(self, *, metric: str, mode: str, budget: int, planned: int, already: int = 0):
        self.metric, self.mode = metric, mode
        self.budget, self.planned = budget, planned
        self.spent = already
        self.best: tuple[float, str] | None = None
        self.log = logging.getLogger("harness.progress")

    def trial_result(self, trial_id: str, row: Iteration) -> None:
        self.spent += 1
        value = row.metric(self.metric)
        who = short_id(trial_id)
        if value is not None and (self.best is None or (value < self.best[0] if self.mode == "min"
                                                       else value > self.best[0])):
            self.best = (value, who)
        donor = row.exploited_from
        self.log.info(
            "%3d/%d iterations  %s it %s/%d  %s %.4f  lr %.2e bs %s wd %g%s  best %.4f (%s)",
            self.spent, self.budget, who, row.iteration, self.planned, self.metric,
            math.nan if value is None else value, row.lr or math.nan, row.per_device_train_batch_size,
            row.weight_decay or 0, f"  (from {short_id(donor)}'s checkpoint)" if donor else "",
            self.best[0] if self.best else math.nan, self.best[1] if self.best else "-",
        )

    def trial_retried(self, trial_id: str, error: str) -> None:
        self.log.warning("%s failed (%s); restarting it from its last checkpoint", short_id(trial_id), _last_line(error))

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        if status != Status.TERMINATED:
            self.log.warning("%s ended %s: %s", short_id(trial_id), status, _last_line(error))
