"""Pure functions on run records: where the time went, budgets, concurrency, early stopping, PBT's
waste, and the aggregation of several seeds (:mod:`harness.reporting.seeds`).

Every number comes from :class:`~harness.contract.record.RunRecord` files (the per-iteration rows a
strategy reported, stamped by one clock, the driver's), never from the console. Functions never
mutate their input, and the bootstrap takes a seeded generator.

The accounting (docs/accounting.md says why it holds):

* wall = set-up (before the first trial iteration starts) + the trial window + teardown;
* mean concurrency = Σ trial runtime / trial window: what makes a job shorter than Σ;
* early stopping shrinks Σ itself: (planned − run iterations of the trials a scheduler stopped)
  × their mean iteration time is what it avoided;
* PBT stops nothing early; an exploit overwrites the receiver's weights, so iterations whose
  results no final model embodies are waste, never time saved.
* slot utilization says how long the trials held their slots; device utilization says how busy
  they kept what they held: CPU = Σ CPU-seconds of the trials' own processes / Σ (iteration
  seconds x CPUs reserved), GPU = the mean GPU utilization weighted by GPU-seconds held
  (:func:`device_utilization`, from the figures every iteration's report carries: ``cpu_percent``,
  ``cpus_reserved``, ``gpus``, ``gpu_util_percent``).

A trial's busy intervals: each reported iteration covers ``[received_at - time_this_iter_s,
received_at]``. Intervals are clipped to the job's window, so records whose stamps disagree by a
few seconds (clock skew between the driver and a remote node, or a hand-made record) cannot yield
negative durations or more concurrency than trials.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.contract.iteration import PHASES, PURE_PHASES, Iteration
from harness.contract.record import RunRecord, Status, TrialRecord

Interval = tuple[float, float]

#: Budgets of two runs are comparable when they differ by at most this fraction.
BUDGET_TOLERANCE = 0.10
#: More than this many trials at once on average counts as "ran in parallel".
PARALLEL_THRESHOLD = 1.05
#: Slot utilization below this counts as an under-used cluster.
UNDER_USED = 0.5


def merge(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def trial_intervals(trial: TrialRecord, lo: float = -math.inf, hi: float = math.inf) -> list[Interval]:
    """Busy intervals of one trial, one per reported iteration, clipped to [lo, hi] and merged."""
    raw = []
    for row in trial.all_rows:
        end = row.received_at
        if end is None:
            continue
        start, end = max(lo, end - row.seconds), min(hi, end)
        if end > start:
            raw.append((start, end))
    return merge(raw)


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


def metric_of(record: RunRecord) -> tuple[str, str]:
    """(metric, mode) the run optimized, from its saved config."""
    tune = record.config.get("tune", {})
    return tune.get("metric", "eval_loss"), tune.get("mode", "min")


def better(mode: str) -> Callable[[Sequence[float]], float]:
    return min if mode == "min" else max


def planned_iterations(record: RunRecord) -> int:
    return int(record.config.get("train", {}).get("iterations", 0))


def iteration_seconds(trial: TrialRecord) -> float:
    """Mean seconds one of this trial's iterations took (nan without any)."""
    times = [row.seconds for row in trial.history]
    return sum(times) / len(times) if times else math.nan


def early_stopping(record: RunRecord) -> tuple[int, int, float]:
    """(trials stopped before their planned iterations, iterations that avoided, trial-seconds).

    Only trials that ended normally (TERMINATED) count: an errored trial avoided nothing, it
    failed. The missing iterations are valued at the trial's own mean iteration time.
    """
    planned = planned_iterations(record)
    stopped = avoided = 0
    seconds = 0.0
    for t in record.trials:
        if t.status == Status.TERMINATED and 0 < t.iterations < planned:
            stopped += 1
            avoided += planned - t.iterations
            seconds += (planned - t.iterations) * iteration_seconds(t)
    return stopped, avoided, seconds


def lineage_waste(record: RunRecord) -> tuple[int, float]:
    """(iterations, trial-seconds) that no final model embodies: PBT's discarded work.

    Each reported row is a checkpoint; its parent is the newest row of the same trial one
    iteration earlier that arrived before it, or, for the first row after an exploit, the donor's
    newest row at the restored iteration. The final models are each trial's last row; every row
    not among their ancestors was trained and then overwritten. Superseded rows and discarded
    trials take part in the ancestry but are not counted here: they are reruns, counted as such.
    """
    rows: dict[tuple[str, int], Iteration] = {}
    parent: dict[tuple[str, int], tuple[str, int] | None] = {}
    arrived = {t.trial_id: t.all_rows for t in record.trials + record.discarded}

    def newest(trial_id: str, iteration: int, before: float) -> tuple[str, int] | None:
        found = [j for j, r in enumerate(arrived.get(trial_id, []))
                 if r.iteration == iteration and (r.received_at or 0) <= before]
        return (trial_id, found[-1]) if found else None

    for trial_id, trial_rows in arrived.items():
        for i, row in enumerate(trial_rows):
            rows[(trial_id, i)] = row
            before = row.received_at or math.inf
            donor = row.exploited_from
            if donor:
                parent[(trial_id, i)] = newest(donor, int(row.segment_start_iteration or 0), before)
            else:
                parent[(trial_id, i)] = newest(trial_id, row.iteration - 1, before) if row.iteration > 1 else None
    again = {id(r) for t in record.trials for r in t.superseded} | {id(r) for t in record.discarded for r in t.all_rows}
    kept: set[tuple[str, int]] = set()
    for t in record.trials:
        last = t.last
        node = next(((t.trial_id, i) for i, r in enumerate(arrived[t.trial_id]) if r is last), None)
        while node is not None and node not in kept:
            kept.add(node)
            node = parent.get(node)
    # reruns (faults, discarded trials) are counted as such (rerun_iterations, time lost), not again here
    lost = [rows[n] for n in rows if n not in kept and id(rows[n]) not in again]
    return len(lost), float(sum(r.seconds for r in lost))


def distinct_configs(record: RunRecord) -> int:
    """Distinct (lr, batch size, weight decay) combinations that were trained, mutations included."""
    seen = set()
    for t in record.trials:
        for row in t.all_rows:
            values = tuple(row.hparams.as_dict().values())
            if all(v is not None for v in values):
                seen.add(tuple(round(float(v), 12) for v in values))
    return len(seen)


def best_value(record: RunRecord) -> float:
    """The best metric value any trial reported at any iteration."""
    metric, mode = metric_of(record)
    values = [v for t in record.trials for row in t.all_rows if (v := row.metric(metric)) is not None]
    return better(mode)(values) if values else math.nan


def segment_iteration_times(record: RunRecord) -> tuple[list[float], list[float]]:
    """time_this_iter_s of the first iteration of every trial segment, and of all later ones. A
    segment starts where a trial (re)starts: its first row, and every row after a pause or an
    exploit (``segment_start_iteration`` changes)."""
    first, later = [], []
    for t in record.trials:
        previous_start = None
        for row in t.all_rows:  # a rerun after a fault starts a segment too
            start = row.segment_start_iteration
            if row.time_this_iter_s is None:
                continue
            (first if start != previous_start else later).append(float(row.time_this_iter_s))
            previous_start = start
    return first, later


def phase_seconds(record: RunRecord) -> dict[str, float]:
    """Σ seconds per phase over all rows (phases a record lacks count 0)."""
    return {p: float(sum(row.phases.get(p) or 0.0 for t in record.trials for row in t.all_rows)) for p in PHASES}


def anytime(record: RunRecord) -> list[tuple[float, float, float]]:
    """(seconds since the job started, cumulative trial-seconds, best metric so far) after each
    reported iteration, in arrival order: the anytime curve of HPO benchmarks."""
    metric, mode = metric_of(record)
    pick = better(mode)
    rows = sorted((row for t in record.trials for row in t.all_rows if row.received_at is not None),
                  key=lambda r: r.received_at)
    out, spent, best = [], 0.0, math.nan
    for row in rows:
        spent += row.seconds
        value = row.metric(metric)
        if value is not None:
            best = value if math.isnan(best) else pick([best, value])
        out.append((row.received_at - record.started_at, spent, best))
    return out


def anytime_by_budget(record: RunRecord) -> list[tuple[float, float]]:
    """(trial-iterations run, best metric so far) after each reported iteration, in arrival order:
    the x-axis of the normalized anytime ranks is this count over the run's budget."""
    return [(float(i), best) for i, (_, _, best) in enumerate(anytime(record), start=1)]


def device_utilization(record: RunRecord) -> tuple[float, float, float]:
    """(CPU utilization, GPU utilization, GPUs per trial) of the CPUs and GPUs the trials held,
    while they held them, over every iteration run (reruns and discarded trials too: they held
    their devices as well).

    CPU: Σ CPU-seconds of the trials' own processes / Σ (iteration seconds x CPUs reserved), so
    1.0 is every reserved CPU busy all the time (more is possible: a trial may use more threads
    than it reserved). GPU: the utilization weighted by iteration seconds x GPUs. GPUs per trial:
    the most any iteration had, 0 for none. NaN where no iteration recorded them (an older
    harness; for the GPU also: no GPU), so a missing figure is never read as an idle device.

    A rate stands for its whole iteration: a segment's first iteration is measured from the trial
    function's start (:mod:`harness.trial.sysmon`), and the process start-up and imports Ray's
    ``time_this_iter_s`` also holds are taken to run at that rate.
    """
    rows = [row for t in record.trials + record.discarded for row in t.all_rows]
    cpu_s = held = 0.0
    gpu_busy = gpu_held = 0.0
    for row in rows:
        if row.cpu_percent is not None and row.cpus_reserved:
            cpu_s += row.cpu_percent / 100 * row.seconds
            held += row.seconds * row.cpus_reserved
        if row.gpu_util_percent is not None and row.gpus:
            gpu_busy += row.gpu_util_percent / 100 * row.seconds * row.gpus
            gpu_held += row.seconds * row.gpus
    gpus = [row.gpus for row in rows if row.gpus is not None]
    return (cpu_s / held if held > 0 else math.nan, gpu_busy / gpu_held if gpu_held > 0 else math.nan,
            float(max(gpus)) if gpus else math.nan)


@dataclass
class Summary:
    """One run's measured figures (one strategy at one seed)."""

    strategy: str
    seed: int
    run_dir: str
    trials: int
    errored: int
    retries: int  # failures a trial survived by restarting from its last checkpoint
    resumes: int  # times the run was continued with --resume after its driver died or stopped
    redone_iterations: int  # iterations trained again after a resume (not yet checkpointed)
    rerun_iterations: int  # iterations run twice for any reason (faults, exploits going back), counted in iterations_run
    time_lost_s: float  # down time between a fault and its resume + trial-seconds redone
    trials_without_result: int
    budget_trial_iterations: int
    iterations_run: int
    wall_s: float
    setup_s: float
    trial_window_s: float
    teardown_s: float
    sum_runtime_s: float
    sum_over_wall: float  # Σ trial runtime / wall: how much shorter than its trials the job was
    mean_concurrency: float  # Σ trial runtime / trial window
    peak_concurrency: int
    slots: int
    slot_utilization: float  # Σ trial runtime / (trial window x slots)
    cpu_utilization: float  # Σ CPU-seconds of trial processes / Σ (iteration s x CPUs reserved); NaN: not recorded
    gpu_utilization: float  # GPU utilization of the GPUs trials held, weighted by GPU-seconds; NaN: none measured
    gpus_per_trial: float  # GPUs a trial held (0: none; NaN: not recorded)
    wall_utilization: float  # Σ trial runtime / (wall x slots)
    pure_s: float  # Σ train + eval seconds
    overhead_s: float  # Σ trial runtime - pure, plus process start-ups outside Ray's clock
    overhead_ratio: float  # wall / (pure / slots): 1.0 is a harness that costs nothing
    first_iteration_s: float  # median first iteration of a trial segment
    later_iteration_s: float  # median of every other iteration
    first_iteration_ratio: float
    completed_all_iterations: int
    early_stopped: int
    early_stop_avoided_iterations: int
    early_stop_avoided_s: float
    exploits: int
    discarded_iterations: int
    discarded_s: float
    distinct_configs: int
    best_eval_loss: float  # the best value of the run's metric (eval_loss unless configured otherwise)
    phases: dict[str, float] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "phases"}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(record: RunRecord, run_dir: str = "") -> Summary:
    window = (record.started_at, record.finished_at)
    # discarded trials held their slots too (their work was done again: rerun_iterations)
    intervals = [trial_intervals(t, *window) for t in record.trials + record.discarded]
    busy = [iv for ivs in intervals for iv in ivs]
    first_busy = min(busy)[0] if busy else record.started_at
    last_busy = max(busy, key=lambda i: i[1])[1] if busy else record.started_at
    trial_window = last_busy - first_busy
    _, peak = concurrency(intervals, window)
    total = sum(t.runtime_s for t in record.trials + record.discarded)
    wall = record.wall_s
    slots = record.slots or 1
    phases = phase_seconds(record)
    pure = sum(phases[p] for p in PURE_PHASES)
    stopped, avoided, avoided_s = early_stopping(record)
    discarded, discarded_s = lineage_waste(record)
    first, later = segment_iteration_times(record)
    first_s, later_s = _median(first), _median(later)
    planned = planned_iterations(record)
    cpu_used, gpu_used, gpus = device_utilization(record)
    return Summary(
        strategy=record.strategy,
        seed=record.seed,
        run_dir=run_dir,
        trials=len(record.trials),
        errored=sum(t.status == Status.ERROR for t in record.trials),
        retries=sum(t.retries for t in record.trials),
        resumes=len(record.resumes),
        redone_iterations=sum(r["redone_iterations"] for r in record.resumes),
        rerun_iterations=record.rerun_iterations,
        time_lost_s=sum(r["down_s"] + r["redone_s"] for r in record.resumes),
        trials_without_result=sum(not t.history for t in record.trials),
        budget_trial_iterations=record.budget_trial_iterations,
        iterations_run=record.iterations_run,
        wall_s=wall,
        setup_s=first_busy - record.started_at,
        trial_window_s=trial_window,
        teardown_s=record.finished_at - last_busy,
        sum_runtime_s=total,
        sum_over_wall=total / wall if wall > 0 else math.nan,
        mean_concurrency=total / trial_window if trial_window > 0 else 0.0,
        peak_concurrency=peak,
        slots=slots,
        slot_utilization=total / (trial_window * slots) if trial_window > 0 else math.nan,
        cpu_utilization=cpu_used,
        gpu_utilization=gpu_used,
        gpus_per_trial=gpus,
        wall_utilization=total / (wall * slots) if wall > 0 else math.nan,
        pure_s=pure,
        overhead_s=total - pure + phases.get("process_up", 0.0),
        overhead_ratio=wall / (pure / slots) if pure > 0 else math.nan,
        first_iteration_s=first_s,
        later_iteration_s=later_s,
        first_iteration_ratio=first_s / later_s if later_s and not math.isnan(later_s) else math.nan,
        completed_all_iterations=sum(t.iterations >= planned for t in record.trials),
        early_stopped=stopped,
        early_stop_avoided_iterations=avoided,
        early_stop_avoided_s=avoided_s,
        exploits=len(record.exploits()),
        discarded_iterations=discarded,
        discarded_s=discarded_s,
        distinct_configs=distinct_configs(record),
        best_eval_loss=best_value(record),
        phases=phases,
    )
