"""The simulation itself: one strategy's schedule on a cluster, as SimPy processes.

* The cluster is its slots (``harness capacity``'s trials per node), each holding a trial process
  that is cold until its first segment and warm after it when Ray reuses actors (the sequential
  grid runs in the driver: always warm).
* A trial is a process that runs segments: each waits for a slot (a
  :class:`simpy.PriorityResource`, so segments start in the policy's order), pays the scheduler's
  gap, a cold or warm start and a restore when it starts from a checkpoint, then iterations of
  train + checkpoint until the policy stops or pauses it; a paused trial waits for the policy's
  event (a barrier, or at once after an asynchronous exploit) and queues again.
* Every step is written as the harness's own events (``trial_started``, ``trial_result``,
  ``trial_ended``, ``run_finished``), folded into a :class:`~harness.contract.record.RunRecord`
  exactly as a measured run's are, so every table, plot and verdict applies unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from harness.contract.record import RunRecord, Status
from harness.simulate.costs import CostModel
from harness.simulate.policies import CONTINUE, STOP, Policy, SimTrial


@dataclass
class _Process:
    """A trial process on one slot of one node."""

    pid: int
    node: int
    warm: bool = False


class Simulation:
    def __init__(self, *, costs: CostModel, per_node: list[int], policy: Policy, seed: int, meta: dict[str, Any],
                 reuse: bool = True, in_driver: bool = False):
        """``meta``: the record's strategy, preset, seed, config and budget. ``reuse``: a trial
        process serves later segments warm (Ray's ``reuse_actors``). ``in_driver``: the trials run
        in the driver process, one at a time (the sequential grid): every start is warm."""
        self.env = simpy.Environment()
        self.costs, self.policy, self.reuse = costs, policy, reuse
        self.rng = np.random.default_rng(seed)
        self.capacity = sum(per_node)
        if self.capacity < 1:
            raise ValueError("the cluster holds no trial at all")
        self.slots = simpy.PriorityResource(self.env, capacity=self.capacity)
        self.idle = [_Process(pid=i, node=node, warm=in_driver)
                     for i, node in enumerate(n for n, k in enumerate(per_node) for _ in range(k))]
        self.busy = [0] * len(per_node)
        self.live = 0
        self.started: set[str] = set()
        self.finished = self.env.event()
        self.record = RunRecord.started({"strategy": meta["strategy"], "preset": meta["preset"], "seed": meta["seed"],
                                         "config": meta["config"], "at": 0.0, "budget": meta["budget"],
                                         "tracking": False})
        policy.bind(self)

    def _emit(self, kind: str, **fields: Any) -> None:
        self.record.apply({"event": kind, "at": self.env.now, **fields})

    def run(self) -> RunRecord:
        self.env.process(self._driver())
        self.env.run()
        return self.record

    # -- processes ------------------------------------------------------------------------------

    def _driver(self) -> Any:
        yield self.env.timeout(self.costs.driver_setup.draw(self.rng))
        self._launch()
        if self.live:
            yield self.finished
        yield self.env.timeout(self.costs.teardown.draw(self.rng))
        self._emit("run_finished", slots=self.capacity)

    def _launch(self) -> None:
        # a launched trial counts from now, though it has not asked for its slot yet
        while (trial := self.policy.next_trial(self.capacity - self.live)) is not None:
            self.live += 1
            self.env.process(self._trial(trial))

    def _trial(self, trial: SimTrial) -> Any:
        while True:
            decision = yield self.env.process(self._segment(trial))
            if decision == STOP:
                break
            yield self.policy.resume_when(trial)
        self._emit("trial_ended", trial_id=trial.trial_id, status=str(Status.TERMINATED))
        self.live -= 1
        self._launch()
        if self.live == 0 and not self.finished.triggered:
            self.finished.succeed()

    def _segment(self, trial: SimTrial) -> Any:
        costs, draw = self.costs, (lambda dist: dist.draw(self.rng))
        with self.slots.request(priority=self.policy.priority(trial)) as slot:
            yield slot
            proc = next((p for p in self.idle if p.warm), None) or self.idle[0]
            self.idle.remove(proc)
            node = proc.node
            self.busy[node] += 1  # a held slot counts from now: segments granted together start together
            yield self.env.timeout(draw(costs.start_gap))
            if trial.trial_id not in self.started:  # Ray's trial_started: when it first gets its resources
                self.started.add(trial.trial_id)
                self._emit("trial_started", trial_id=trial.trial_id, name=trial.trial_id, config=trial.config)
            start_phase = "setup" if proc.warm else "imports"
            start = {start_phase: draw(costs.warm_start if proc.warm else costs.cold_start)}
            if trial.iteration > 0:
                start["restore"] = draw(costs.restore)
            proc.warm = proc.warm or self.reuse
            segment_start, first, decision = trial.iteration, True, STOP
            while True:
                slow = costs.contention.factor(self.busy[node])
                phases = {k: v * slow for k, v in start.items()} if first else {}
                phases.update(train=draw(costs.train) * slow, checkpoint=draw(costs.checkpoint) * slow)
                seconds = math.fsum(phases.values())
                yield self.env.timeout(seconds)
                trial.iteration += 1
                values = self.policy.row(trial)
                row = {"iteration": trial.iteration, "segment_start_iteration": segment_start,
                       "time_this_iter_s": seconds, "node_ip": f"node{node}", "pid": proc.pid,
                       "phases": phases, **values}
                if not first:
                    row["exploited_from"] = ""
                self._emit("trial_result", trial_id=trial.trial_id, row=row)
                decision = self.policy.after_report(trial)
                if decision != CONTINUE:
                    break
                first = False
            self.busy[node] -= 1
            self.idle.append(proc)
        return decision
