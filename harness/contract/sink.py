"""The one interface every consumer of trial events implements: the event log (and so the run
record), MLflow and the console progress line. A strategy reports each trial's events to a
:class:`Sinks` and never needs to know who listens."""

from __future__ import annotations

from collections.abc import Iterable

from harness.contract.iteration import HParams, Iteration


class Sink:
    """A receiver of trial events; the methods do nothing unless a sink overrides them."""

    def trial_started(self, trial_id: str, name: str, hparams: HParams) -> None:
        """A trial starts, or restarts (PBT's exploits, a retry, a resume): the same trial id."""

    def trial_result(self, trial_id: str, row: Iteration) -> None:
        """One iteration of the trial was trained, evaluated, checkpointed and reported."""

    def trial_retried(self, trial_id: str, error: str) -> None:
        """The trial failed and restarts from its last checkpoint."""

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        """The trial is done: TERMINATED, or ERROR after its retries."""


class Sinks(Sink):
    """Every event to each sink, in order (the event log first: what it has written survives)."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)

    def trial_started(self, trial_id: str, name: str, hparams: HParams) -> None:
        for sink in self.sinks:
            sink.trial_started(trial_id, name, hparams)

    def trial_result(self, trial_id: str, row: Iteration) -> None:
        for sink in self.sinks:
            sink.trial_result(trial_id, row)

    def trial_retried(self, trial_id: str, error: str) -> None:
        for sink in self.sinks:
            sink.trial_retried(trial_id, error)

    def trial_ended(self, trial_id: str, status: str, error: str = "") -> None:
        for sink in self.sinks:
            sink.trial_ended(trial_id, status, error)
