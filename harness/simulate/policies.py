"""The strategies' decisions inside a simulation: which trials start, when one stops, pauses at a
barrier or restarts from a donor's checkpoint, and the loss each iteration reports.

Two modes, and every simulated record says which made it:

* **replay** (:class:`Replay`): the decisions of one measured run, read from its record: the same
  trials in the same order, the same segments, the same exploits and early stops, the same
  losses. Only the times are simulated, so the schedule can be checked against the run itself,
  or moved to another cluster shape.
* **what-if** (:class:`Grid`, :class:`Asha`, :class:`Pbt`): each strategy's own rules (the
  sequential grid and FIFO run every trial to the end; ASHA's rungs with Ray's cutoff and the
  harness's until-spent budget; synchronous PBT's barriers and asynchronous PBT's per-report
  exploits, with quantile ``quantile_fraction``) on losses drawn from recorded curves
  (:class:`Curves`). PB2 differs from PBT only in how it explores, not when, so its schedule is
  PBT's.

A trial's loss after an exploit continues from the donor's loss with the increments of a freshly
drawn curve: the donor's weights are carried over (which a replay of learning curves from epoch 1,
as Syne Tune's simulator does, cannot express).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from harness import strategies
from harness.contract.iteration import HPARAMS, Iteration, checkpoint_name
from harness.contract.record import RunRecord
from harness.simulate.costs import segments

CONTINUE, STOP, PAUSE = "continue", "stop", "pause"
REPLAY, WHAT_IF = "replay", "what-if"


@dataclass
class SimTrial:
    index: int
    trial_id: str
    config: dict[str, Any]
    iteration: int = 0
    """The iterations behind the trial's newest checkpoint."""
    loss: float = math.nan
    donor: str = ""
    """The trial whose checkpoint the next segment starts from after an exploit."""
    started_from: str = "base"
    curve: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    """The loss at each iteration of the checkpoint the trial continues from (what an exploit copies)."""


class Policy:
    """What the engine asks a strategy. ``engine`` is bound before the simulation starts."""

    mode = WHAT_IF
    engine: Any = None

    def bind(self, engine: Any) -> None:
        self.engine = engine

    def next_trial(self, idle_slots: int) -> SimTrial | None:
        """A trial to start now, or None (asked at the start and whenever a trial ends)."""
        raise NotImplementedError

    def priority(self, trial: SimTrial) -> float:
        """Lower starts first among segments waiting for a slot (ties: first come, first served)."""
        return float(trial.index)

    def row(self, trial: SimTrial) -> dict[str, Any]:
        """The reported values of the iteration the trial just finished (``trial.iteration``)."""
        raise NotImplementedError

    def after_report(self, trial: SimTrial) -> str:
        raise NotImplementedError

    def resume_when(self, trial: SimTrial) -> simpy.Event:
        """After PAUSE: fires when the trial may take a slot again (its restart state set by then)."""
        raise NotImplementedError

    def _now(self) -> simpy.Event:
        event = self.engine.env.event()
        event.succeed()
        return event


# -- replay --------------------------------------------------------------------------------------


class Replay(Policy):
    """The decisions of one measured run."""

    mode = REPLAY

    def __init__(self, record: RunRecord):
        runs = [(t, segments(t)) for t in record.trials + record.discarded if t.all_rows]
        runs.sort(key=lambda run: run[1][0][0].received_at - run[1][0][0].seconds)
        self.plan: list[tuple[Any, list[list[Iteration]]]] = runs
        # every segment's place in the order the run really started them: who gets a slot first
        order = sorted((seg[0].received_at - seg[0].seconds, i, j)
                       for i, (_, segs) in enumerate(runs) for j, seg in enumerate(segs))
        self.rank = {(i, j): n for n, (_, i, j) in enumerate(order)}
        self.launched = 0
        self.at: dict[int, tuple[int, int]] = {}  # trial index -> (segment, row) it is on
        self.synch = bool(record.config.get("tune", {}).get("synch")) and strategies.spec(record.strategy).exploits
        self.expected: dict[int, int] = {}
        for _, segs in self.plan:
            for it in {row.iteration for seg in segs for row in seg}:
                self.expected[it] = self.expected.get(it, 0) + 1
        self.reached: dict[int, set[int]] = {}
        self.barriers: dict[int, simpy.Event] = {}

    def next_trial(self, idle_slots: int) -> SimTrial | None:
        if self.launched >= len(self.plan):
            return None
        trial, _ = self.plan[self.launched]
        sim = SimTrial(self.launched, trial.trial_id, dict(trial.initial_config))
        self.at[sim.index] = (0, 0)
        self.launched += 1
        return sim

    def priority(self, trial: SimTrial) -> float:
        return float(self.rank[(trial.index, self.at[trial.index][0])])

    def _current(self, trial: SimTrial) -> Iteration:
        seg, i = self.at[trial.index]
        return self.plan[trial.index][1][seg][i]

    def row(self, trial: SimTrial) -> dict[str, Any]:
        row = self._current(trial)
        seg, _ = self.at[trial.index]
        head = self.plan[trial.index][1][seg][0]
        trial.iteration = row.iteration
        return {"eval_loss": row.eval_loss, "train_loss": row.train_loss,
                **{k: getattr(row, k) for k in HPARAMS if getattr(row, k) is not None},
                "exploited_from": row.exploited_from, "started_from": row.started_from,
                "segment_start_iteration": head.segment_start_iteration or 0}

    def after_report(self, trial: SimTrial) -> str:
        seg, i = self.at[trial.index]
        segs = self.plan[trial.index][1]
        it = self._current(trial).iteration
        self.reached.setdefault(it, set()).add(trial.index)
        if len(self.reached[it]) >= self.expected.get(it, 0) and it in self.barriers:
            self.barriers.pop(it).succeed()
        if i + 1 < len(segs[seg]):
            self.at[trial.index] = (seg, i + 1)
            return CONTINUE
        if seg + 1 < len(segs):
            self.at[trial.index] = (seg + 1, 0)
            return PAUSE
        return STOP

    def resume_when(self, trial: SimTrial) -> simpy.Event:
        seg, _ = self.at[trial.index]
        start = self.plan[trial.index][1][seg][0]
        trial.iteration = start.segment_start_iteration or 0
        trial.donor = start.exploited_from
        if not self.synch:
            return self._now()
        it = trial.iteration
        if len(self.reached.get(it, ())) >= self.expected.get(it, 0):
            return self._now()
        return self.barriers.setdefault(it, self.engine.env.event())


# -- what-if: the strategies' own rules on drawn losses -------------------------------------------


class Curves:
    """Recorded learning curves (the metric per iteration of trials that were never exploited),
    each with the configuration that produced it."""

    def __init__(self, records: Sequence[RunRecord], metric: str = "eval_loss"):
        self.curves: list[tuple[dict[str, Any], list[float]]] = []
        for record in records:
            for t in record.trials:
                values = []
                for row in t.history:
                    if row.exploited_from or row.metric(metric) is None:
                        break
                    values.append(float(row.metric(metric)))
                if values:
                    self.curves.append((dict(t.initial_config), values))
        if not self.curves:
            self.curves = [({}, [1.0])]

    def draw(self, rng: np.random.Generator) -> tuple[dict[str, Any], list[float]]:
        config, curve = self.curves[int(rng.integers(len(self.curves)))]
        return dict(config), list(curve)

    def like(self, config: dict[str, Any], rng: np.random.Generator) -> list[float]:
        """A curve of the recorded configuration nearest to ``config`` (lr on a log scale; the same
        batch size and weight decay where one was recorded), one of the nearest at random."""
        def distance(recorded: dict[str, Any]) -> float:
            lr, other = recorded.get("lr"), config.get("lr")
            d = abs(math.log(lr) - math.log(other)) if lr and other else 0.0
            return d + sum(10.0 for k in HPARAMS if k != "lr" and k in recorded and recorded[k] != config.get(k))

        ranked = sorted(range(len(self.curves)), key=lambda i: distance(self.curves[i][0]))
        best = distance(self.curves[ranked[0]][0])
        near = [i for i in ranked if distance(self.curves[i][0]) <= best + 1e-9]
        return list(self.curves[near[int(rng.integers(len(near)))]][1])

    @staticmethod
    def step(curve: list[float], iteration: int, previous: float) -> float:
        """The value at ``iteration`` (1-based), continuing from ``previous`` with the curve's
        increments; past the curve's end the last increment halves each iteration."""
        if iteration <= 1 or math.isnan(previous):
            return curve[0]
        if iteration <= len(curve):
            return previous + curve[iteration - 1] - curve[iteration - 2]
        last = curve[-1] - curve[-2] if len(curve) > 1 else 0.0
        return previous + last * 0.5 ** (iteration - len(curve))


class WhatIf(Policy):
    """What every what-if strategy shares: trials drawn from the curves, losses stepped along them."""

    def __init__(self, *, trials: int, iterations: int, curves: Curves, rng: np.random.Generator,
                 budget: int = 0, configs: Sequence[dict[str, Any]] = (),
                 sample: Callable[[np.random.Generator], dict[str, Any]] | None = None):
        """``configs``: the trials' configurations in order (the grid's); after them, ``sample``
        draws one from the search space (without it: a recorded configuration). Each trial's
        curve is one of the nearest recorded configuration's."""
        self.trials, self.iterations, self.curves, self.rng = trials, iterations, curves, rng
        self.budget = budget or trials * iterations
        self.configs, self.sample = list(configs), sample
        self.launched = 0
        self.population: list[SimTrial] = []

    def _new(self) -> SimTrial:
        if self.launched < len(self.configs) or self.sample is not None:
            config = dict(self.configs[self.launched]) if self.launched < len(self.configs) else self.sample(self.rng)
            curve = self.curves.like(config, self.rng)
        else:
            config, curve = self.curves.draw(self.rng)
        trial = SimTrial(self.launched, f"sim_{self.launched:05d}", config, curve=curve)
        self.launched += 1
        self.population.append(trial)
        return trial

    def next_trial(self, idle_slots: int) -> SimTrial | None:
        return self._new() if self.launched < self.trials else None

    def row(self, trial: SimTrial) -> dict[str, Any]:
        exploited, trial.donor = trial.donor, ""
        start = trial.started_from
        trial.loss = Curves.step(trial.curve, trial.iteration, trial.loss)
        trial.history = trial.history[:trial.iteration - 1] + [trial.loss]
        trial.started_from = checkpoint_name(trial.trial_id, trial.iteration)
        return {"eval_loss": trial.loss, **trial.config, "exploited_from": exploited, "started_from": start}

    def after_report(self, trial: SimTrial) -> str:
        return CONTINUE if trial.iteration < self.iterations else STOP


class Grid(WhatIf):
    """The grid, every combination to the end: FIFO on the cluster's slots, or one at a time (manual)."""


class Asha(WhatIf):
    """Ray's ASHAScheduler (rungs at grace x rf^k below max_t; a trial stops when its value is worse
    than the (1 - 1/rf) quantile of those recorded at the rung) with the harness's until-spent
    budget: a new trial only while the budget still has room for it, and every trial stopped once
    the iterations reported plus those in flight reach the budget."""

    def __init__(self, *, grace: int, reduction_factor: float, **kw: Any):
        super().__init__(**kw)
        self.grace, self.rf = grace, reduction_factor
        self.rungs: dict[int, list[float]] = {}
        milestone = grace
        while milestone < self.iterations:
            self.rungs[milestone] = []
            milestone = int(milestone * reduction_factor)
        self.spent = 0
        self.live: set[int] = set()

    def next_trial(self, idle_slots: int) -> SimTrial | None:
        if idle_slots <= 0 or self.spent + len(self.live) + self.grace > self.budget:
            return None
        trial = self._new()
        self.live.add(trial.index)
        return trial

    def after_report(self, trial: SimTrial) -> str:
        self.spent += 1
        stop = False
        if trial.iteration in self.rungs:  # Ray: the cutoff of the values recorded before, then record
            recorded = self.rungs[trial.iteration]
            if recorded:
                stop = -trial.loss < float(np.nanpercentile(recorded, (1 - 1 / self.rf) * 100))
            recorded.append(-trial.loss)  # Ray keeps max-mode scores
        if trial.iteration >= self.iterations or stop or self.spent + len(self.live) - 1 >= self.budget:
            self.live.discard(trial.index)
            return STOP
        return CONTINUE


class Pbt(WhatIf):
    """Ray's PopulationBasedTraining at perturbation_interval 1 (PB2 explores differently but at the
    same moments). Synchronous: every trial pauses at each iteration until the whole population has
    reported it; then the bottom ``quantile`` restart from random members of the top one.
    Asynchronous: a trial in the bottom quantile of the latest values of the unfinished trials
    restarts from a member of the top one when it reports; any other trial pauses there too while
    others wait for a slot (a population larger than the slots takes turns). Either way the least
    advanced waiting trial gets the next slot (Ray's ``choose_trial_to_run``)."""

    def __init__(self, *, synch: bool, quantile: float, **kw: Any):
        super().__init__(**kw)
        self.synch, self.quantile = synch, quantile
        self.reached: dict[int, list[SimTrial]] = {}
        self.barriers: dict[int, simpy.Event] = {}
        self.finished: set[int] = set()
        self.exploits = 0

    def priority(self, trial: SimTrial) -> float:
        return trial.iteration * 1e6 + trial.index

    def _quantiles(self, members: list[SimTrial]) -> tuple[list[SimTrial], list[SimTrial]]:
        ranked = sorted(members, key=lambda t: t.loss)
        n = min(len(ranked) // 2, int(math.ceil(len(ranked) * self.quantile)))
        return (ranked[-n:] if n else []), ranked[:n]

    def _exploit(self, trial: SimTrial, donors: list[SimTrial]) -> None:
        """``trial`` restarts from a top member's newest checkpoint, with a perturbed lr."""
        donor = donors[int(self.rng.integers(len(donors)))]
        trial.donor, trial.iteration = donor.trial_id, donor.iteration
        trial.started_from = checkpoint_name(donor.trial_id, donor.iteration)
        trial.loss, trial.history = donor.loss, list(donor.history)
        trial.config = {**donor.config, "lr": float(donor.config.get("lr", 1e-4)) * float(self.rng.choice([0.8, 1.2]))}
        _, trial.curve = self.curves.draw(self.rng)
        self.exploits += 1

    def after_report(self, trial: SimTrial) -> str:
        if trial.iteration >= self.iterations:
            self.finished.add(trial.index)
            return STOP
        if self.synch:
            waiting = self.reached.setdefault(trial.iteration, [])
            waiting.append(trial)
            if len(waiting) == len(self.population):
                bottom, top = self._quantiles(waiting)
                for loser in bottom:
                    self._exploit(loser, top)
                if trial.iteration in self.barriers:
                    self.barriers.pop(trial.iteration).succeed()
            return PAUSE
        reported = [t for t in self.population if t.iteration >= 1 and t.index not in self.finished]
        bottom, top = self._quantiles(reported)
        if trial in bottom and top:
            self._exploit(trial, top)
            return PAUSE
        return PAUSE if self.engine.slots.queue else CONTINUE

    def resume_when(self, trial: SimTrial) -> simpy.Event:
        if not self.synch or len(self.reached.get(trial.iteration, ())) == len(self.population):
            return self._now()
        return self.barriers.setdefault(trial.iteration, self.engine.env.event())


def what_if(strategy: str, *, trials: int, iterations: int, budget: int, tune: dict[str, Any], curves: Curves,
            rng: np.random.Generator, grid: Sequence[dict[str, Any]] = (),
            sample: Callable[[np.random.Generator], dict[str, Any]] | None = None) -> Policy:
    """The what-if policy of a registered strategy, by what its registry entry says it does;
    ``grid``: the combinations a grid strategy runs; ``sample``: a draw from the search space."""
    spec = strategies.spec(strategy)
    common = {"trials": trials, "iterations": iterations, "curves": curves, "rng": rng, "budget": budget,
              "configs": grid if spec.trials == strategies.TRIALS_GRID else (), "sample": sample}
    if spec.exploits:
        return Pbt(synch=bool(tune.get("synch", True)), quantile=float(tune.get("quantile_fraction", 0.25)), **common)
    if spec.trials == strategies.TRIALS_UNTIL_SPENT:
        return Asha(grace=int(tune.get("asha_grace_period", 1)), reduction_factor=float(tune.get("asha_reduction_factor", 2)),
                    **common)
    return Grid(**common)
