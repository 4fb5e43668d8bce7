"""The cost model: what each step of a schedule takes, as measured distributions.

A run record holds every iteration's phases and the driver's clock, so the costs a simulation
needs are read off it (:func:`fit`): the driver's set-up before the first trial and its teardown
after the last, the scheduler's delay between a slot freeing and the next trial segment starting,
a segment's start-up on a fresh trial process (``cold_start``: imports, model, data, Trainer) and on
a warm, reused one (``warm_start``), restoring a checkpoint, and each iteration's train + eval and
checkpoint + report. Stragglers decide a synchronous barrier, so each cost keeps its spread: the
measured values themselves (``samples``, drawn with replacement) or, in a file a person wrote, a
median and a log-normal spread.

On a machine whose trials share CPU cores (the 2-core CI machine runs 4 trials on 2 cores) the
measured seconds depend on how many trials ran at once. ``contention`` undoes that: each measured
value is divided by the slow-down at the moment it was measured (busy trials x threads per trial /
cores, at least 1), and a simulation multiplies it back by the slow-down it sees. On GPU nodes,
where each trial has its own devices, leave ``cores_per_node`` at 0.

Load from outside the run (another job on the node, a parallel test) slows it too, and neither
the contention model nor a replay knows it. Records with per-trial CPU time (``cpu_percent``, from
:mod:`harness.trial.sysmon`) show it: :func:`outside_load` names the iterations whose trial got
clearly less of the CPU than the run's own contention leaves it, so a validation can say which
measured runs were disturbed rather than blame the schedule model. (Dividing it out of the costs
was tried and rejected: the CPU share is measured over a whole segment, start-up included, and
putting it back on draws made replays of disturbed runs worse, not better.)

The file (``CostModel.save``/``load``; JSON, or TOML for one written by hand) is what a user edits
for their cluster: ``harness/simulate/seed_scale.toml`` is the seed's, with its assumptions.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import strategies
from harness.config import ConfigError
from harness.contract.iteration import Iteration
from harness.contract.record import RunRecord, TrialRecord

NonNegative = Annotated[float, Field(ge=0)]


class Dist(BaseModel):
    """Seconds one step takes: the measured values, or a median with a log-normal spread."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median: NonNegative = 0.0
    spread: NonNegative = 0.0
    """σ of the logarithm (0.1: most draws within ±20% of the median). Ignored with ``samples``."""
    samples: tuple[NonNegative, ...] = ()
    """Measured values; a draw picks one of them (the spread as it was, stragglers included)."""

    @classmethod
    def of(cls, values: Iterable[float]) -> Dist:
        values = [round(float(v), 4) for v in values if v is not None and not math.isnan(v)]
        if not values:
            return cls()
        logs = [math.log(v) for v in values if v > 0]
        spread = statistics.pstdev(logs) if len(logs) > 1 else 0.0
        return cls(median=statistics.median(values), spread=round(spread, 4), samples=tuple(values))

    def draw(self, rng: np.random.Generator) -> float:
        if self.samples:
            return float(self.samples[rng.integers(len(self.samples))])
        if self.spread == 0 or self.median == 0:
            return self.median
        return float(self.median * math.exp(rng.normal(0.0, self.spread)))

    def describe(self) -> str:
        n = f", {len(self.samples)} measured" if self.samples else ""
        return f"median {self.median:.3g} s, spread {self.spread:.2f}{n}"


class Contention(BaseModel):
    """Trials that share a node's CPU cores slow each other down (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cores_per_node: NonNegative = 0.0
    """Cores the trials share on a node; 0: no contention (each trial has its own CPUs or GPUs)."""
    threads_per_trial: Annotated[float, Field(gt=0)] = 1.0
    """Cores one busy trial keeps busy (torch threads x workers)."""

    def factor(self, busy: int) -> float:
        if self.cores_per_node <= 0:
            return 1.0
        return max(1.0, busy * self.threads_per_trial / self.cores_per_node)


class CostModel(BaseModel):
    """Every cost a schedule is made of. Fields a hand-written file leaves out cost nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = ""
    """Where the numbers come from: run folders, or the assumptions of a hand-written file."""
    driver_setup: Dist = Dist()
    """From the driver's start to the first trial starting (Ray, MLflow, the searcher)."""
    teardown: Dist = Dist()
    """From the last result to the run's end (saving, the tables, MLflow)."""
    start_gap: Dist = Dist()
    """From a slot freeing (or a barrier releasing) to the next segment starting: the scheduler's delay."""
    cold_start: Dist = Dist()
    """A segment's start on a fresh trial process: imports, model, data, the Trainer (``process_up``
    excepted: Ray starts the processes during the driver's set-up)."""
    warm_start: Dist = Dist()
    """A segment's start on a reused process (Ray's ``reuse_actors``; every segment of the grid)."""
    restore: Dist = Dist()
    """Extra for a segment that starts from a checkpoint (its own after a pause, a donor's after an exploit)."""
    train: Dist = Dist()
    """One iteration's training and evaluation."""
    checkpoint: Dist = Dist()
    """One iteration's checkpoint save and report."""
    contention: Contention = Contention()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--costs {str(path)!r} does not exist; write one with `harness simulate fit RUN... "
                              "--out costs.json`, or start from harness/simulate/seed_scale.toml")
        try:
            data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
            return cls.model_validate(data)
        except (ValueError, ValidationError) as err:
            first = str(err).splitlines()
            raise ConfigError(f"--costs {str(path)!r} is not a cost model: {' '.join(first[:3])}; "
                              "see harness/simulate/seed_scale.toml for the fields") from None

    def summary(self) -> list[str]:
        return [f"{name}: {getattr(self, name).describe()}" for name in
                ("driver_setup", "cold_start", "warm_start", "restore", "train", "checkpoint", "start_gap", "teardown")]


# -- fitting: the costs in run records ---------------------------------------------------------


def segments(trial: TrialRecord) -> list[list[Iteration]]:
    """A trial's rows cut where it (re)started: a new trial process segment begins at its first
    row and wherever ``segment_start_iteration`` (or the process) changes."""
    out: list[list[Iteration]] = []
    previous: tuple[Any, Any] | None = None
    for row in trial.all_rows:
        key = (row.segment_start_iteration, row.pid)
        if not out or key != previous or row.iteration <= out[-1][-1].iteration:
            out.append([row])
        else:
            out[-1].append(row)
        previous = key
    return out


def _iteration_parts(row: Iteration, first: bool) -> tuple[float, float]:
    """(train + eval, checkpoint + report) seconds of one row. A later row's ``time_this_iter_s``
    is the iteration itself, so what the phases do not name goes with the checkpoint; a segment's
    first row also holds the start-up, which is not the iteration's."""
    train = (row.phases.get("train") or 0.0) + (row.phases.get("eval") or 0.0)
    rest = (row.phases.get("checkpoint") or 0.0) + (row.phases.get("report") or 0.0)
    if not first and row.time_this_iter_s is not None:
        rest = max(rest, row.seconds - train)
    return train, rest


def _busy_counter(record: RunRecord) -> Any:
    """How many trials were busy on a row's node at an instant (the row's own included)."""
    spans: dict[Any, list[tuple[float, float]]] = {}
    for t in record.trials + record.discarded:
        for row in t.all_rows:
            if row.received_at is not None:
                spans.setdefault(row.node_ip, []).append((row.received_at - row.seconds, row.received_at))

    def busy(node: Any, at: float) -> int:
        return max(1, sum(start <= at <= end for start, end in spans.get(node, [])))

    return busy


#: An iteration counts as slowed from outside only when its trial got at most 1/OUTSIDE_MIN (half)
#: of the CPU share the run's iterations usually got (their 90th percentile), after the run's own
#: contention. Smaller dips are common and harmless: in a CI run with another test beside it, 4 of
#: 5 smoke runs had iterations at 1.3-1.5x less, and every replay was within 4.2%; the misses seen
#: came with 3-5x slower iterations.
OUTSIDE_MIN = 2.0


def outside_load(record: RunRecord, contention: Contention) -> dict[tuple[str, float], float]:
    """(trial id, ``received_at``) of each row -> the slow-down from outside the run during it
    (only rows above :data:`OUTSIDE_MIN`; an absent row: 1). A row's CPU share is the cores its
    trial's processes kept busy (``cpu_percent``) times the run's own slow-down at that moment, over
    the threads a trial runs: about 1 where the run alone shares the cores. Empty without a CPU
    contention model (``cores_per_node`` 0: trials with their own devices) or CPU figures (a record
    made before the harness measured them)."""
    if contention.cores_per_node <= 0:
        return {}
    busy = _busy_counter(record)
    share: dict[tuple[str, float], float] = {}
    for t in record.trials + record.discarded:
        for row in t.all_rows:
            if row.received_at is None or not row.cpu_percent or row.seconds <= 0:
                continue
            own = contention.factor(busy(row.node_ip, row.received_at - row.seconds / 2))
            share[(t.trial_id, row.received_at)] = row.cpu_percent / 100 * own / contention.threads_per_trial
    if not share:
        return {}
    usual = float(np.percentile(list(share.values()), 90))
    slowed = {key: usual / got for key, got in share.items()}
    return {key: round(factor, 4) for key, factor in slowed.items() if factor >= OUTSIDE_MIN}


def threads_per_trial(config: Mapping[str, Any]) -> float:
    """Cores one trial keeps busy: each worker runs torch on ceil(Cw) threads (at least one)."""
    res = config.get("resources", {})
    return float(int(res.get("workers_per_trial", 1)) * max(1, math.ceil(float(res.get("cpus_per_worker", 1)))))


def fit(records: Sequence[RunRecord], *, cores_per_node: float = 0.0, source: str = "") -> CostModel:
    """The costs measured in ``records`` (pooled), each divided by the CPU slow-down it ran under
    when ``cores_per_node`` says the trials shared that many cores."""
    if not records:
        raise ConfigError("no run records to fit costs from; run make bench-all (or pass run folders)")
    values: dict[str, list[float]] = {name: [] for name in CostModel.model_fields if name not in ("source", "contention")}
    threads = statistics.median(threads_per_trial(r.config) for r in records)
    contention = Contention(cores_per_node=cores_per_node, threads_per_trial=threads)
    for record in records:
        busy = _busy_counter(record)
        rows = [row for t in record.trials + record.discarded for row in t.all_rows if row.received_at is not None]
        if not rows:
            continue
        starts = sorted(t.started_at for t in record.trials + record.discarded if t.started_at is not None)
        values["driver_setup"].append(max(0.0, (starts[0] if starts else min(r.received_at - r.seconds for r in rows))
                                          - record.started_at))
        values["teardown"].append(max(0.0, (record.finished_at or record.last_event_at) - max(r.received_at for r in rows)))
        barriers = _barriers(record)
        free_at: dict[Any, float] = {}  # a process (node, pid) -> when its last segment ended
        cut = {t.trial_id: segments(t) for t in record.trials + record.discarded}
        segs = sorted(((t, s) for t in record.trials + record.discarded for s in cut[t.trial_id]),
                      key=lambda ts: ts[1][0].received_at - ts[1][0].seconds)
        for trial, seg in segs:
            head = seg[0]
            start = head.received_at - head.seconds
            slow = contention.factor(busy(head.node_ip, start + head.seconds / 2))
            train, rest = _iteration_parts(head, first=True)
            setup = max(0.0, head.seconds - train - rest)
            restore = head.phases.get("restore") or 0.0
            if (head.segment_start_iteration or 0) > 0:
                values["restore"].append(restore / slow)
            # only a fresh trial process measures its own start (process_up); a reused one's imports are ~0
            key = "cold_start" if (head.phases.get("process_up") or 0.0) > 0 else "warm_start"
            values[key].append(max(0.0, setup - restore) / slow)
            for i, row in enumerate(seg):
                slow_row = contention.factor(busy(row.node_ip, row.received_at - row.seconds / 2))
                train, rest = _iteration_parts(row, first=i == 0)
                values["train"].append(train / slow_row)
                values["checkpoint"].append(rest / slow_row)
            ready = barriers.get(head.segment_start_iteration or 0, -math.inf) if len(cut[trial.trial_id]) > 1 else -math.inf
            process = (head.node_ip, head.pid)
            if process in free_at:
                values["start_gap"].append(max(0.0, start - max(free_at[process], ready)))
            free_at[process] = seg[-1].received_at
    return CostModel(source=source or f"fitted from {len(records)} run record(s)", contention=contention,
                     **{name: Dist.of(v) for name, v in values.items()})


def _barriers(record: RunRecord) -> dict[int, float]:
    """For a synchronous population run: iteration -> when its last trial reported it (the barrier)."""
    if not record.config.get("tune", {}).get("synch") or not strategies.spec(record.strategy).exploits:
        return {}
    out: dict[int, float] = {}
    for t in record.trials + record.discarded:
        for row in t.all_rows:
            if row.received_at is not None:
                out[row.iteration] = max(out.get(row.iteration, -math.inf), row.received_at)
    return out
