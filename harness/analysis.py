"""Pure functions on run records: timelines, wall vs Σ runtime, concurrency, savings, quiz answers.

Every number here comes from :class:`~harness.records.RunRecord` files (the per-iteration rows a
strategy reported, stamped by one clock, the driver's), never from the console. Functions never
mutate their input.

A trial's busy intervals: each reported iteration covers ``[received_at - time_this_iter_s,
received_at]``. Intervals are clipped to the job's window, so records whose stamps disagree by a
few seconds (clock skew between the driver and a remote node, or a hand-made record) cannot yield
negative durations or more concurrency than trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.records import RunRecord, TrialRecord
from harness.train import HPARAMS

Interval = tuple[float, float]


def trial_intervals(trial: TrialRecord, lo: float = -math.inf, hi: float = math.inf) -> list[Interval]:
    """Busy intervals of one trial, one per reported iteration, clipped to [lo, hi] and merged."""
    raw = []
    for row in trial.history:
        end = row.get("received_at")
        dur = row.get("time_this_iter_s") or 0.0
        if end is None:
            continue
        start, end = max(lo, end - max(dur, 0.0)), min(hi, end)
        if end > start:
            raw.append((start, end))
    return merge(raw)


def merge(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def concurrency(intervals_by_trial: list[list[Interval]], window: Interval) -> tuple[float, int]:
    """(mean, peak) number of trials busy at once over ``window``."""
    events = []
    for intervals in intervals_by_trial:
        for start, end in intervals:
            events += [(start, 1), (end, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    busy = peak = 0
    area, last = 0.0, window[0]
    for t, delta in events:
        area += busy * (t - last)
        last = t
        busy += delta
        peak = max(peak, busy)
    length = window[1] - window[0]
    return (area / length if length > 0 else 0.0), peak


def iteration_seconds(trial: TrialRecord) -> float:
    """Mean seconds one of this trial's iterations took (nan without any)."""
    times = [row.get("time_this_iter_s") or 0.0 for row in trial.history]
    return sum(times) / len(times) if times else math.nan


def planned_iterations(record: RunRecord) -> int:
    return int(record.config.get("train", {}).get("iterations", 0))


def early_stop_savings(record: RunRecord) -> tuple[int, float]:
    """(trials stopped before their planned iterations, trial-seconds not spent because of it).

    Only trials that ended normally (TERMINATED) count: an errored trial saved nothing, it failed.
    The missing iterations are valued at the trial's own mean iteration time.
    """
    planned = planned_iterations(record)
    stopped, saved = 0, 0.0
    for t in record.trials:
        if t.status == "TERMINATED" and 0 < t.iterations < planned:
            stopped += 1
            saved += (planned - t.iterations) * iteration_seconds(t)
    return stopped, saved


def exploit_inheritance(record: RunRecord) -> tuple[int, float]:
    """(PBT exploits, trial-seconds of training inherited from donors instead of redone).

    An exploit at iteration k hands the receiver k iterations of the donor's training; they are
    valued at the donor's mean iteration time.
    """
    by_id = {t.trial_id: t for t in record.trials}
    exploits = record.exploits()
    inherited = 0.0
    for e in exploits:
        donor = by_id.get(e["donor"])
        if donor is not None:
            inherited += e["from_iteration"] * iteration_seconds(donor)
    return len(exploits), inherited


def distinct_configs(record: RunRecord) -> int:
    """Distinct (lr, batch size, weight decay) combinations that were trained, mutations included."""
    seen = set()
    for t in record.trials:
        for row in t.history:
            if all(row.get(k) is not None for k in HPARAMS):
                seen.add(tuple(round(float(row[k]), 12) for k in HPARAMS))
    return len(seen)


def best_eval_loss(record: RunRecord) -> float:
    losses = [row["eval_loss"] for t in record.trials for row in t.history if row.get("eval_loss") is not None]
    return min(losses) if losses else math.nan


def slot_seconds_to_reach(record: RunRecord, target: float) -> float | None:
    """Trial-seconds spent (all trials, in the order results arrived) until some trial first
    reported ``eval_loss <= target``; None if none ever did."""
    rows = sorted((row for t in record.trials for row in t.history if row.get("received_at") is not None),
                  key=lambda r: r["received_at"])
    spent = 0.0
    for row in rows:
        spent += row.get("time_this_iter_s") or 0.0
        if row.get("eval_loss") is not None and row["eval_loss"] <= target + 1e-12:
            return spent
    return None


@dataclass
class Summary:
    """One strategy's measured figures (one row of the comparison)."""

    strategy: str
    run_dir: str
    trials: int
    errored: int
    wall_s: float
    trial_window_s: float
    sum_runtime_s: float
    speedup: float  # Σ trial runtime / wall
    mean_concurrency: float
    peak_concurrency: int
    slots: int
    utilization: float  # Σ trial runtime / (wall x slots)
    completed_all_iterations: int
    early_stopped: int
    early_stop_saved_s: float
    exploits: int
    inherited_s: float
    distinct_configs: int
    best_eval_loss: float
    best_final_eval_loss: float
    slot_s_to_manual_best: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in vars(self).items() if k != "extra"}
        return row


def summarize(record: RunRecord, run_dir: str = "") -> Summary:
    window = (record.started_at, record.finished_at)
    intervals = [trial_intervals(t, *window) for t in record.trials]
    busy = [iv for ivs in intervals for iv in ivs]
    trial_window = (max(busy, key=lambda i: i[1])[1] - min(busy)[0]) if busy else 0.0
    mean_c, peak_c = concurrency(intervals, window)
    total = sum(t.runtime_s for t in record.trials)
    wall = record.wall_s
    slots = record.slots or 1
    stopped, saved = early_stop_savings(record)
    n_exploits, inherited = exploit_inheritance(record)
    planned = planned_iterations(record)
    best = record.best_trial()
    return Summary(
        strategy=record.strategy,
        run_dir=run_dir,
        trials=len(record.trials),
        errored=sum(t.status == "ERROR" for t in record.trials),
        wall_s=wall,
        trial_window_s=trial_window,
        sum_runtime_s=total,
        speedup=total / wall if wall > 0 else math.nan,
        mean_concurrency=mean_c,
        peak_concurrency=peak_c,
        slots=slots,
        utilization=total / (wall * slots) if wall > 0 else math.nan,
        completed_all_iterations=sum(t.iterations >= planned for t in record.trials),
        early_stopped=stopped,
        early_stop_saved_s=saved,
        exploits=n_exploits,
        inherited_s=inherited,
        distinct_configs=distinct_configs(record),
        best_eval_loss=best_eval_loss(record),
        best_final_eval_loss=best.eval_loss if best else math.nan,
    )


def compare(records: dict[str, RunRecord], run_dirs: dict[str, str] | None = None) -> list[Summary]:
    """One summary per strategy; slot-seconds to reach the manual grid's best, when there is one."""
    run_dirs = run_dirs or {}
    summaries = [summarize(rec, run_dirs.get(name, "")) for name, rec in records.items()]
    manual = records.get("manual")
    if manual is not None:
        target = best_eval_loss(manual)
        for s in summaries:
            s.slot_s_to_manual_best = slot_seconds_to_reach(records[s.strategy], target)
            s.extra["manual_best_eval_loss"] = target
    return summaries


# --------------------------------------------------------------------------- the quiz

@dataclass(frozen=True)
class Verdict:
    option: str
    text: str
    holds: str  # "yes", "no", "partly", or "n/a" when the measurements cannot decide it
    evidence: str


def _yn(value: bool) -> str:
    return "yes" if value else "no"


def q1_decomposition(s: Summary) -> dict[str, float]:
    """Manual-equivalent time of a strategy's trials, and where it went.

    manual_equivalent = Σ trial runtime + trial-seconds saved by early stopping + trial-seconds
    inherited through exploitation (what a one-at-a-time run of the same trials from scratch
    would cost); wall = manual_equivalent - saved_by_concurrency - saved_by_early_stop - inherited.
    """
    equivalent = s.sum_runtime_s + s.early_stop_saved_s + s.inherited_s
    concurrency_saving = max(0.0, s.sum_runtime_s - s.wall_s)
    return {
        "manual_equivalent_s": equivalent,
        "wall_s": s.wall_s,
        "saved_by_concurrency_s": concurrency_saving,
        "saved_by_early_stopping_s": s.early_stop_saved_s,
        "saved_by_exploitation_s": s.inherited_s,
        "overhead_s": max(0.0, s.wall_s - s.sum_runtime_s),
    }


def quiz_q1(s: Summary) -> tuple[list[Verdict], str]:
    d = q1_decomposition(s)
    saved = d["manual_equivalent_s"] - d["wall_s"]
    share = (d["saved_by_concurrency_s"] / saved) if saved > 0 else 0.0
    parallel, stopped = s.mean_concurrency > 1.05, s.early_stopped > 0
    verdicts = [
        Verdict("A", "Ray skips some trials.", _yn(s.completed_all_iterations < s.trials and not stopped),
                f"{s.completed_all_iterations} of {s.trials} trials reported all their iterations"
                + (f"; the other {s.trials - s.completed_all_iterations} were stopped by the scheduler, not skipped"
                   if stopped else "")),
        Verdict("B", "The cluster was under-used.", _yn(s.utilization < 0.5),
                f"slot utilization {s.utilization:.0%} (Σ trial runtime / (wall x {s.slots} slots))"),
        Verdict("C", "The trials ran in parallel and the bad ones were stopped early.",
                "yes" if parallel and stopped else ("partly" if parallel or stopped else "no"),
                f"mean {s.mean_concurrency:.2f} / peak {s.peak_concurrency} trials at once saved "
                f"{d['saved_by_concurrency_s']:.0f} s; early stopping saved {d['saved_by_early_stopping_s']:.0f} s "
                f"({s.early_stopped} trials stopped); exploitation inherited {d['saved_by_exploitation_s']:.0f} s"),
        Verdict("D", "Ray compresses time by batching trial steps.", "no",
                "every iteration's time is measured where it ran; Σ trial runtime counts each of them once"),
    ]
    if parallel and not stopped:
        conclusion = (f"C, but only its first half: concurrency explains {share:.0%} of the {saved:.0f} s between "
                      f"the manual-equivalent {d['manual_equivalent_s']:.0f} s and the {d['wall_s']:.0f} s wall "
                      f"time; no trial was stopped early"
                      + (f" (PBT overwrote weak trials with clones of strong ones {s.exploits} time(s), inheriting "
                         f"{d['saved_by_exploitation_s']:.0f} s of training instead)" if s.exploits else ""))
    elif parallel and stopped:
        conclusion = (f"C: concurrency saved {d['saved_by_concurrency_s']:.0f} s and early stopping "
                      f"{d['saved_by_early_stopping_s']:.0f} s of the manual-equivalent "
                      f"{d['manual_equivalent_s']:.0f} s (wall {d['wall_s']:.0f} s)")
    else:
        conclusion = (f"none: trials ran one at a time (mean {s.mean_concurrency:.2f} at once), so the wall time "
                      f"{d['wall_s']:.0f} s is not shorter than the Σ of trial runtimes {s.sum_runtime_s:.0f} s")
    return verdicts, conclusion


def quiz_q2(pbt: Summary, manual: Summary | None, others: list[Summary]) -> list[Verdict]:
    """What PBT offers over manual tuning, option by option, from the measurements."""
    if manual is None:
        shorter_holds = more_holds = "n/a"
        shorter_ev = more_ev = "no manual run to compare with"
    else:
        shorter = pbt.wall_s < manual.wall_s
        shorter_holds = ("yes" if pbt.early_stopped else "partly") if shorter else "no"
        shorter_ev = (f"PBT wall {pbt.wall_s:.0f} s vs manual {manual.wall_s:.0f} s "
                      f"({manual.wall_s / pbt.wall_s:.2f}x), from {pbt.mean_concurrency:.2f} trials at once; "
                      f"PBT stopped {pbt.early_stopped} trials early")
        pbt_rate = pbt.distinct_configs / pbt.wall_s if pbt.wall_s else 0.0
        manual_rate = manual.distinct_configs / manual.wall_s if manual.wall_s else 0.0
        more_holds = _yn(pbt_rate > manual_rate)
        more_ev = (f"PBT trained {pbt.distinct_configs} distinct configurations (mutations counted) in "
                   f"{pbt.wall_s:.0f} s = {pbt_rate * 60:.1f}/min; manual {manual.distinct_configs} in "
                   f"{manual.wall_s:.0f} s = {manual_rate * 60:.1f}/min")
    known = [o.best_eval_loss for o in others if not math.isnan(o.best_eval_loss)]
    all_best = min([pbt.best_eval_loss, *known])
    return [
        Verdict("A", "Shorter total runtime, because trials run concurrently and weak ones stop early.",
                shorter_holds, shorter_ev),
        Verdict("B", "More hyperparameter combinations explored in the same window of time.", more_holds, more_ev),
        Verdict("C", "A guarantee of finding the globally best configuration.", "no",
                f"no such guarantee exists; measured: PBT's best eval_loss {pbt.best_eval_loss:.4f}, the best of "
                f"all strategies {all_best:.4f}"),
        Verdict("D", "Every trial is trained for the full number of epochs.",
                _yn(pbt.completed_all_iterations == pbt.trials and pbt.trials > 0),
                f"{pbt.completed_all_iterations} of {pbt.trials} PBT trials reported every planned iteration "
                "(true of PBT, but no advantage: weak trials keep training, as clones of strong ones)"),
    ]
