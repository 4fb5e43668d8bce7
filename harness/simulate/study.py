"""What the simulator answers: a measured run replayed (and checked against itself), a strategy
on a cluster the harness never ran on (what-if), and how both scale.

Every simulated record carries ``config["simulated"]`` (the mode, the costs' source, the cluster),
and every table and report made from one says "simulated" where a reader looks first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import strategies
from harness.cluster.capacity import Node, TrialShape, plan
from harness.config import ConfigError, ExperimentConfig
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.reporting.analysis import Summary, summarize
from harness.reporting.report import Table
from harness.simulate.costs import Contention, CostModel, fit, outside_load, threads_per_trial
from harness.simulate.engine import Simulation
from harness.simulate.policies import REPLAY, WHAT_IF, Curves, Replay, what_if

#: What a replay must reproduce, and how far off it may be.
MEASURES = ("wall_s", "sum_runtime_s", "mean_concurrency", "slot_utilization")
LABELS = {"wall_s": "wall (s)", "sum_runtime_s": "Σ trial runtime (s)", "mean_concurrency": "mean concurrency",
          "slot_utilization": "slot utilization"}
TOLERANCE = {"own record": 0.10, "other seeds": 0.10, "other slots": 0.15}
#: Simulations per prediction: the prediction is their median (the costs are drawn, not averaged).
REPS = 20


@dataclass(frozen=True)
class Cluster:
    """A cluster shape, as ``harness capacity`` takes it: N nodes of (Cnode, Gnode), Csys kept back."""

    nodes: int
    cpus_per_node: float
    gpus_per_node: float = 0.0
    system_cpus: float = 0.0

    def per_node(self, cfg: ExperimentConfig) -> list[int]:
        """Trials each node holds at once (:class:`CapacityError` when none fits anywhere)."""
        r = cfg.resources
        shape = TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker)
        node = Node(self.cpus_per_node, self.gpus_per_node, self.system_cpus)
        return plan([node] * self.nodes, shape, 1).per_node

    def describe(self) -> str:
        return (f"{self.nodes} node(s) x ({self.cpus_per_node:g} CPUs, {self.gpus_per_node:g} GPUs), "
                f"Csys {self.system_cpus:g}")


def _meta(config: dict[str, Any], *, strategy: str, preset: str, seed: int, budget: int, mode: str,
          costs: CostModel, cluster: str) -> dict[str, Any]:
    return {"strategy": strategy, "preset": preset, "seed": seed, "budget": budget,
            "config": {**config, "simulated": {"mode": mode, "costs": costs.source, "cluster": cluster}}}


def replay(record: RunRecord, costs: CostModel, *, seed: int = 0) -> RunRecord:
    """``record``'s decisions on its own slots with ``costs``."""
    spec = strategies.spec(record.strategy)
    slots = 1 if spec.sequential else (record.slots or 1)
    meta = _meta(record.config, strategy=record.strategy, preset=record.preset, seed=record.seed,
                 budget=record.budget_trial_iterations, mode=REPLAY, costs=costs, cluster=f"{slots} slot(s)")
    return Simulation(costs=costs, per_node=[slots], policy=Replay(record), seed=seed, meta=meta,
                      reuse=bool(record.config.get("tune", {}).get("reuse_actors", True)),
                      in_driver=spec.sequential).run()


def simulate_what_if(cfg: ExperimentConfig, costs: CostModel, cluster: Cluster, curves: Curves, *,
                     seed: int = 0) -> RunRecord:
    """``cfg``'s strategy by its own rules on ``cluster`` (the sequential grid: one slot)."""
    spec = strategies.spec(cfg.strategy)
    per_node = [1] if spec.sequential else cluster.per_node(cfg)
    config = cfg.model_dump(mode="json")
    if costs.contention.cores_per_node > 0:  # costs measured where trials shared cores: share this cluster's
        costs = costs.model_copy(update={"contention": Contention(
            cores_per_node=cluster.cpus_per_node - cluster.system_cpus, threads_per_trial=threads_per_trial(config))})
    policy = what_if(cfg.strategy, trials=spec.planned_trials(cfg), iterations=cfg.train.iterations,
                     budget=cfg.budget_iterations(), tune=config.get("tune", {}), curves=curves,
                     rng=np.random.default_rng(seed + 7919), grid=cfg.search.grid(cfg.grid_lrs()),
                     sample=lambda rng: _sample(cfg, rng))
    meta = _meta(config, strategy=cfg.strategy, preset=cfg.preset, seed=cfg.seed, budget=cfg.budget_iterations(),
                 mode=WHAT_IF, costs=costs, cluster=cluster.describe())
    return Simulation(costs=costs, per_node=per_node, policy=policy, seed=seed, meta=meta,
                      reuse=cfg.tune.reuse_actors, in_driver=spec.sequential).run()


def _sample(cfg: ExperimentConfig, rng: np.random.Generator) -> dict[str, Any]:
    """One configuration from the search space, as Ray's would draw it (lr log-uniform)."""
    s = cfg.search
    return {"lr": float(math.exp(rng.uniform(math.log(s.lr_lower), math.log(s.lr_upper)))),
            "per_device_train_batch_size": int(rng.choice(list(s.bs_choices))),
            "weight_decay": float(rng.choice(list(s.wd_choices)))}


def predict(simulate: Callable[[int], RunRecord], reps: int = REPS) -> tuple[dict[str, float], RunRecord]:
    """The median of each measure over ``reps`` simulations (seeds 0..reps-1), and the first one."""
    records = [simulate(rep) for rep in range(reps)]
    runs = [summarize(record) for record in records]
    return {m: statistics.median(getattr(s, m) for s in runs) for m in MEASURES}, records[0]


# -- validation: predicted against measured ---------------------------------------------------------


@dataclass
class Check:
    run_dir: str
    strategy: str
    seed: int
    slots: int
    basis: str
    """``own record``, ``other seeds`` (same strategy and slots), ``other slots`` (same strategy)."""
    calibrated_on: int
    measured: dict[str, float]
    predicted: dict[str, float]
    record: RunRecord = field(repr=False)
    """The measured run."""
    simulated: RunRecord = field(repr=False)
    """The first of the simulations."""
    outside: list[float] = field(default_factory=list)
    """The slow-down from outside the run of each iteration it slowed
    (:func:`~harness.simulate.costs.outside_load`): a replay models no such load, so a miss of a
    disturbed run says little about the schedule model."""

    @property
    def disturbed(self) -> str:
        """"" for an undisturbed run, else what disturbed it, in words."""
        if not self.outside:
            return ""
        low, high = f"{min(self.outside):.1f}", f"{max(self.outside):.1f}"
        return (f"disturbed from outside the run: {len(self.outside)} iteration(s) got "
                f"{low if low == high else f'{low}-{high}'}x less CPU than the run's own contention leaves")

    def error(self, measure: str) -> float:
        m = self.measured[measure]
        return (self.predicted[measure] - m) / m if m else math.nan

    @property
    def worst(self) -> float:
        return max(abs(self.error(m)) for m in MEASURES)

    @property
    def ok(self) -> bool:
        return self.worst <= TOLERANCE[self.basis]


def validate(runs: Sequence[tuple[RunDir, RunRecord]], *, cores_per_node: float = 0.0, reps: int = REPS) -> list[Check]:
    """Replay every run with costs from its own record, from the other seeds of its strategy and
    slot count (held out), and from its strategy's runs at other slot counts (cross-shape)."""
    # a resumed run stood still between its drivers; a replay has no model of that time
    done = [(d, r) for d, r in runs if r.finished_at and r.trials and not r.resumes]
    checks = []
    for run_dir, record in done:
        same = [r for d, r in done if r.strategy == record.strategy and Path(r.preset).stem == Path(record.preset).stem
                and d != run_dir]
        bases = {"own record": [record], "other seeds": [r for r in same if r.slots == record.slots],
                 "other slots": [r for r in same if r.slots != record.slots]}
        measured = summarize(record)
        outside = sorted(outside_load(record, Contention(cores_per_node=cores_per_node,
                                                         threads_per_trial=threads_per_trial(record.config))).values())
        for basis, pool in bases.items():
            if not pool:
                continue
            costs = fit(pool, cores_per_node=cores_per_node, source=f"{basis}: {len(pool)} run(s)")
            predicted, first = predict(lambda rep, c=costs: replay(record, c, seed=rep), reps)
            checks.append(Check(str(run_dir.path), record.strategy, record.seed, record.slots or 1, basis, len(pool),
                                {m: getattr(measured, m) for m in MEASURES}, predicted, record, first, outside))
    if not checks:
        raise ConfigError("no finished run records to replay (resumed runs are left out: a replay has no model of the "
                          "time a run stood still); run make bench-all first")
    return checks


def validation_table(checks: Sequence[Check]) -> Table:
    header = ["strategy", "seed", "slots", "costs from"]
    for m in MEASURES:
        header += [f"{LABELS[m]} measured", "predicted", "error"]
    header += ["within"]
    rows = []
    for c in checks:
        row: list[Any] = [c.strategy, c.seed, c.slots, f"{c.basis} ({c.calibrated_on})"]
        for m in MEASURES:
            row += [round(c.measured[m], 2), round(c.predicted[m], 2), f"{c.error(m):+.1%}"]
        row.append(f"{'yes' if c.ok else 'NO'} (±{TOLERANCE[c.basis]:.0%})" + (f"; {c.disturbed}" if c.outside else ""))
        rows.append(row)
    return Table("validation", "Replay: predicted against measured (simulated, replay mode)", header, rows)


def typical_error(checks: Sequence[Check], measure: str = "wall_s") -> float:
    """The median of the absolute errors on ``measure``: how far off a prediction usually is."""
    return statistics.median(abs(c.error(measure)) for c in checks) if checks else math.nan


def validation_summary(checks: Sequence[Check]) -> list[str]:
    lines = []
    for basis in TOLERANCE:
        group = [c for c in checks if c.basis == basis]
        if group:
            worst = max(group, key=lambda c: c.worst)
            lines.append(f"costs from {basis}: {sum(c.ok for c in group)} of {len(group)} runs within "
                         f"±{TOLERANCE[basis]:.0%} on all four measures; median error on wall "
                         f"{typical_error(group):.1%}, on Σ {typical_error(group, 'sum_runtime_s'):.1%}; largest "
                         f"error {worst.worst:.1%} ({worst.strategy} seed {worst.seed}, {worst.slots} slots)")
    own = [c for c in checks if c.basis == "own record"]
    disturbed = [c for c in own if c.outside]
    if disturbed:
        missed = [c for c in disturbed if not c.ok]
        lines.append(f"{len(disturbed)} of {len(own)} measured runs were disturbed from outside (their trials got clearly "
                     "less CPU than the run's own contention leaves: another job on the node), which no replay models; "
                     f"{len(missed)} of them missed on their own record: "
                     + (", ".join(f"{c.strategy} seed {c.seed} ({c.worst:.1%})" for c in missed) or "none"))
    groups: dict[tuple[str, int], list[float]] = {}
    for c in own:
        groups.setdefault((c.strategy, c.slots), []).append(c.measured["wall_s"])
    spread = [abs(w - statistics.median(ws)) / statistics.median(ws) for ws in groups.values() if len(ws) > 1 for w in ws]
    if spread:
        lines.append(f"for scale, the measured runs themselves: their wall differs from the median of their strategy's "
                     f"runs at the same slots by {statistics.median(spread):.1%} (median), {max(spread):.1%} at most; "
                     "no prediction from other runs can be closer than the runs are to each other")
    return lines


# -- scaling -------------------------------------------------------------------------------------------


def variants() -> list[tuple[str, str, dict[str, Any]]]:
    """What the scaling curves compare: (label, strategy, config overrides). The primary strategy
    (PBT) synchronous and asynchronous, and every baseline that runs trials concurrently (FIFO,
    ASHA); another population strategy (PB2) shares PBT's schedule, the sequential grid has one slot."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for spec in strategies.REGISTRY.values():
        if spec.primary:
            out += [(f"{spec.name.upper()} synchronous", spec.name, {"tune.synch": True}),
                    (f"{spec.name.upper()} asynchronous", spec.name, {"tune.synch": False})]
        elif spec.role == "baseline" and not spec.sequential:
            out.append((spec.name.upper(), spec.name, {}))
    return out


@dataclass(frozen=True)
class Point:
    variant: str
    sweep: str
    """``nodes`` (the population fixed) or ``population`` (the nodes fixed)."""
    nodes: int
    population: int
    summary: Summary


def scaling(base: ExperimentConfig, costs: CostModel, cluster: Cluster, curves: Curves, *, nodes: Sequence[int],
            populations: Sequence[int], population: int, node_count: int) -> list[Point]:
    """Wall and utilization against nodes (at ``population``) and against population (on
    ``node_count`` nodes), for every variant. A population of P buys P x iterations trial-iterations:
    a PBT population of P, a grid of P combinations, ASHA samples until that is spent."""
    points = []
    for label, strategy, overrides in variants():
        for sweep, n, pop in [("nodes", n, population) for n in nodes] + [("population", node_count, p) for p in populations]:
            cfg = base.updated({"strategy": strategy, **overrides,
                                "budget.trial_iterations": pop * base.train.iterations})
            shape = Cluster(n, cluster.cpus_per_node, cluster.gpus_per_node, cluster.system_cpus)
            points.append(Point(label, sweep, n, pop, summarize(simulate_what_if(cfg, costs, shape, curves, seed=0))))
    return points


def scaling_table(points: Sequence[Point]) -> Table:
    rows = [[p.variant, p.sweep, p.nodes, p.population, p.summary.slots, round(p.summary.wall_s / 60, 1),
             round(p.summary.sum_runtime_s / 3600, 2), round(p.summary.mean_concurrency, 1),
             f"{p.summary.slot_utilization:.0%}", f"{p.summary.wall_utilization:.0%}",
             round(p.summary.setup_s + p.summary.teardown_s, 1)]
            for p in points]
    return Table("scaling", "Scaling (simulated, what-if mode)",
                 ["variant", "sweep", "nodes", "population", "slots", "wall (min)", "Σ trial runtime (h)", "mean concurrency",
                  "slot utilization", "wall utilization", "set-up + teardown (s)"], rows)
