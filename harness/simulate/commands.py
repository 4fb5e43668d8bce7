"""``python -m harness simulate <replay|fit|what-if|scaling>``: each action from its inputs to its
files, returning what the command line prints."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from harness.config import ConfigError, ExperimentConfig
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.simulate import outputs
from harness.simulate.costs import CostModel, fit
from harness.simulate.policies import Curves
from harness.simulate.study import REPS, Cluster, scaling, simulate_what_if, validate

#: The seed's cluster as assumed costs (edit a copy for yours).
SEED_SCALE_COSTS = Path(__file__).with_name("seed_scale.toml")


def _runs(paths: Sequence[str | Path], preset: str | None) -> list[tuple[RunDir, RunRecord]]:
    found = outputs.measured_runs(paths, preset)
    if not found:
        which = f" of preset {preset!r}" if preset else ""
        raise ConfigError(f"no run folders{which} with a run_record.json in {' '.join(map(str, paths)) or '(none given)'}; "
                          "run make bench-all first, or name run folders")
    return found


def replay(paths: Sequence[str | Path], *, preset: str | None, out: Path, cores_per_node: float = 0.0,
           reps: int = REPS, tracking: bool = True) -> str:
    checks = validate(_runs(paths, preset), cores_per_node=cores_per_node, reps=reps)
    results_dir = Path(paths[0]) if paths and not (Path(paths[0]) / "run_record.json").is_file() else None
    text, comparison = outputs.write_replay(checks, out, results_dir=results_dir, tracking=tracking)
    where = f"\nvalidation: {out / 'validation.md'}"
    if comparison is not None:
        where += f"\ncomparison of the simulated runs: {comparison.out}" + (
            f" (MLflow run {comparison.mlflow_run_id}, tagged simulated=replay)" if comparison.mlflow_run_id else "")
    return text + where


def fit_costs(paths: Sequence[str | Path], *, preset: str | None, out: Path, cores_per_node: float = 0.0) -> str:
    runs = _runs(paths, preset)
    costs = fit([r for _, r in runs], cores_per_node=cores_per_node,
                source=f"fitted from {len(runs)} run(s): {', '.join(d.path.name for d, _ in runs)}"[:500])
    costs.save(out)
    return "\n".join(costs.summary() + [f"cost model: {out} (edit it for your cluster; --costs {out})"])


def _curves(paths: Sequence[str | Path], preset: str | None) -> tuple[Curves, str]:
    if not paths:
        return Curves([]), "no run folders given for loss curves: every trial reports 1.0"
    runs = _runs(paths, preset)
    curves = Curves([r for _, r in runs])
    which = f" of preset {Path(preset).stem}" if preset else ""
    return curves, (f"losses drawn from {len(curves.curves)} recorded curves of {len(runs)} run(s){which} in "
                    f"{' '.join(map(str, paths))}")


def _banner(costs: CostModel, cluster: Cluster, curves_note: str) -> str:
    return (f"**SIMULATED (what-if mode)**: no run below was executed. Cluster: {cluster.describe()}. "
            f"Costs: {costs.source}. {curves_note.capitalize()}; only ASHA's stops and PBT's exploits depend on "
            "them, so the loss figures are those curves', not the model's. Every table and verdict follows the same "
            "rules as for measured runs.")


def what_if(configs: Sequence[ExperimentConfig], *, costs_file: Path, cluster: Cluster, curve_paths: Sequence[str],
            out: Path, curves_preset: str | None = None, results_dir: Path | None = None, tracking: bool = True) -> str:
    costs = CostModel.load(costs_file)
    curves, note = _curves(curve_paths, curves_preset)
    records = [simulate_what_if(cfg, costs, cluster, curves, seed=cfg.seed) for cfg in configs]
    comparison = outputs.write_what_if(records, out, _banner(costs, cluster, note),
                                       results_dir=results_dir, tracking=tracking)
    return comparison.text + f"\ncomparison: {comparison.out}" + (
        f" (MLflow run {comparison.mlflow_run_id}, tagged simulated=what-if)" if comparison.mlflow_run_id else "")


def scale(base: ExperimentConfig, *, costs_file: Path, cluster: Cluster, curve_paths: Sequence[str],
          nodes: Sequence[int], populations: Sequence[int], population: int, node_count: int, out: Path,
          curves_preset: str | None = None) -> str:
    costs = CostModel.load(costs_file)
    curves, note = _curves(curve_paths, curves_preset)
    started = time.perf_counter()
    points = scaling(base, costs, cluster, curves, nodes=nodes, populations=populations, population=population,
                     node_count=node_count)
    took = time.perf_counter() - started
    text = outputs.write_scaling(points, out, _banner(costs, cluster, note)
                                 + f" {len(points)} simulations in {took:.1f} s on {os.cpu_count()} core(s).")
    return text + f"\nscaling: {out / 'scaling.md'}, {out / 'scaling.png'}"


def default_out(kind: str, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / f"simulate-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"

