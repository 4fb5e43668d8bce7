"""The comparison of several runs: their records -> summaries per run -> aggregates per strategy
-> report, CSV and plots -> a comparison run in MLflow. Reads run records only, never a console."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import strategies
from harness.config import ConfigError
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.reporting.analysis import metric_of, summarize
from harness.reporting.report import write_comparison
from harness.reporting.seeds import aggregate


@dataclass(frozen=True)
class Comparison:
    text: str
    out: Path
    mlflow_run_id: str
    results_dir: Path


def latest_runs(results_dir: str | Path, preset: str | None) -> list[RunDir]:
    """The newest run folder of each (strategy, seed) under ``results_dir`` (by the record's start
    time), of ``preset`` only when given."""
    latest: dict[tuple[str, int], tuple[float, RunDir]] = {}
    for record_file in Path(results_dir).glob("*/run_record.json"):
        run_dir = RunDir(record_file.parent)
        record = run_dir.record()
        if preset and Path(record.preset).stem != Path(preset).stem:
            continue
        key = (record.strategy, record.seed)
        if key not in latest or record.started_at > latest[key][0]:
            latest[key] = (record.started_at, run_dir)
    if not latest:
        which = f" of preset {preset!r}" if preset else ""
        raise ConfigError(f"--latest {str(results_dir)!r}: no run folders{which} with a run_record.json; "
                          "run make bench-... first")
    return [run_dir for _, run_dir in sorted(latest.values(), key=lambda e: e[0])]


def compare(paths: list[str | Path], *, out: str | Path | None = None, latest: str | Path | None = None,
            preset: str | None = None, banner: str = "", tags: dict[str, str] | None = None,
            results_dir: str | Path | None = None, tracking: bool = True) -> Comparison:
    """Compare the runs in ``paths`` (and the newest of each strategy and seed in ``latest``).
    ``banner`` opens the report (a simulation says so there); ``tags`` go on its MLflow runs, in
    ``results_dir``'s store (default: ``latest``, or the first run's folder's parent); no MLflow
    run without ``tracking``."""
    run_dirs = [RunDir.with_record(p) for p in paths] + (latest_runs(latest, preset) if latest else [])
    if not run_dirs:
        raise ConfigError("compare needs run folders (results/<run>) or --latest <results dir>")
    records: dict[tuple[str, int], RunRecord] = {}
    dirs: dict[tuple[str, int], RunDir] = {}
    for run_dir in run_dirs:
        record = run_dir.record()
        key = (record.strategy, record.seed)
        if key in records:
            raise ConfigError(f"two runs of strategy {record.strategy!r} with seed {record.seed} ({dirs[key]}, "
                              f"{run_dir}); compare one run per strategy and seed")
        records[key], dirs[key] = record, run_dir
    modes = {metric_of(r) for r in records.values()}
    if len(modes) > 1:
        raise ConfigError(f"the runs optimized different metrics {sorted(modes)}; compare runs of one metric")
    ((_, mode),) = modes
    order = strategies.order(sorted({name for name, _ in records}))
    keys = sorted(records, key=lambda k: (order.index(k[0]), k[1]))
    aggregates = aggregate([summarize(records[key], str(dirs[key])) for key in keys], mode=mode)
    folder = Path(out) if out else run_dirs[0].path.parent / "comparison"
    text, files = write_comparison(records, aggregates, folder, banner=banner)
    presets = sorted({Path(r.preset).stem for r in records.values()})
    results_dir = Path(results_dir or latest or run_dirs[0].path.parent)
    if not tracking:
        return Comparison(text=text, out=folder, mlflow_run_id="", results_dir=results_dir)
    from harness.reporting.tracking import log_comparison  # mlflow: 1.5 s to import, only here

    run_id = log_comparison(aggregates, files, results_dir=results_dir, experiment=f"hpo-{'+'.join(presets)}",
                            tags={"presets": ",".join(presets), **(tags or {})})
    return Comparison(text=text, out=folder, mlflow_run_id=run_id, results_dir=results_dir)
