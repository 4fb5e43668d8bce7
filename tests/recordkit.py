"""Hand-made run records for the unit tests, built the way production builds them: events, in the
order of their times, folded by :meth:`RunRecord.apply` (what ``events.replay`` does with a log)."""

from __future__ import annotations

from typing import Any

from harness.contract.record import RunRecord

T0 = 1_000.0


def row(it: int, end: float, dur: float, loss: float | None, *, lr: float = 1e-4, bs: int = 2, wd: float = 0.0,
        donor: str = "", start_it: int = 0, train: float | None = None, **extra: Any) -> dict[str, Any]:
    """One reported iteration that ended ``end`` seconds after T0 and took ``dur`` seconds."""
    out = {"iteration": it, "training_iteration": it, "end": end, "time_this_iter_s": dur, "eval_loss": loss,
           "lr": lr, "per_device_train_batch_size": bs, "weight_decay": wd, "exploited_from": donor,
           "segment_start_iteration": start_it, **extra}
    if train is not None:
        out.update(phase_train_s=train, phase_eval_s=0.0)
    return out


class Run:
    """The events of one run; :meth:`record` folds them."""

    def __init__(self, strategy: str = "pbt", *, preset: str = "smoke", seed: int = 0, iterations: int = 3,
                 budget: int = 0, config: dict[str, Any] | None = None, t0: float = T0):
        self.t0 = t0
        cfg = config if config is not None else {"train": {"iterations": iterations}}
        self.events: list[dict[str, Any]] = [{"event": "run_started", "at": t0, "strategy": strategy,
                                              "preset": preset, "seed": seed, "config": cfg, "budget": budget}]

    def add(self, kind: str, at: float, **data: Any) -> Run:
        self.events.append({"event": kind, "at": self.t0 + at, **data})
        return self

    def trial(self, trial_id: str, rows: list[dict[str, Any]], status: str = "TERMINATED", *, name: str = "",
              retries: int = 0, error: str = "") -> Run:
        """A trial that starts when its first row starts, reports ``rows``, and ends after the last."""
        first = rows[0] if rows else {"end": 0.0, "time_this_iter_s": 0.0}
        hparams = {k: first[k] for k in ("lr", "per_device_train_batch_size", "weight_decay") if k in first}
        self.add("trial_started", first["end"] - (first["time_this_iter_s"] or 0.0), trial_id=trial_id,
                 name=name or trial_id, config=hparams)
        for r in rows:
            self.add("trial_result", r["end"], trial_id=trial_id, row={k: v for k, v in r.items() if k != "end"})
        last_end = rows[-1]["end"] if rows else first["end"]
        for _ in range(retries):
            self.add("trial_retried", last_end, trial_id=trial_id, error=error or "boom")
        self.add("trial_ended", last_end, trial_id=trial_id, status=status, error=error)
        return self

    def record(self, *, wall: float | None = None, slots: int = 2, stopped: str = "") -> RunRecord:
        """Fold every event, in time order, after ``run_finished`` at ``wall`` (None: never finished)."""
        if wall is not None:
            self.add("run_finished", wall, slots=slots, stopped=stopped)
        start, *rest = self.events
        record = RunRecord.started(start)
        for event in sorted(rest, key=lambda e: e["at"]):
            record.apply(event)
        return record
