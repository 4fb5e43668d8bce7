"""The simulator's files: simulated run folders, the replay's validation table with the simulated
Gantt beside the measured one, the what-if's comparison (the same report, CSV, plots, quiz and
MLflow runs as a measured comparison, tagged ``simulated``) and the scaling table and plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.config import ConfigError
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.driver.compare import Comparison, compare
from harness.reporting import plots
from harness.simulate.study import Check, Point, scaling_table, validation_summary, validation_table


def measured_runs(paths: Sequence[str | Path], preset: str | None = None) -> list[tuple[RunDir, RunRecord]]:
    """The measured runs in ``paths`` (each a run folder, or a results folder holding them), of
    ``preset`` only when given, each with its record read once; simulated runs are left out (a
    simulation is no measurement)."""
    found: list[RunDir] = []
    for path in map(Path, paths):
        if (path / "run_record.json").is_file():
            found.append(RunDir(path))
        else:
            found += [RunDir(p.parent) for p in sorted(path.glob("*/run_record.json"))]
    loaded = [(d, _record(d)) for d in found]
    return [(d, r) for d, r in loaded if "simulated" not in r.config
            and (not preset or Path(r.preset).stem == Path(preset).stem)]


def _record(run_dir: RunDir) -> RunRecord:
    try:
        return run_dir.record()
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{run_dir.record_file} is not a run record ({type(err).__name__}: {err}); "
                          "move it out of the folder or name the run folders to use") from None


def write_records(records: Sequence[RunRecord], folder: Path) -> list[Path]:
    """One run folder per simulated record (``<strategy>-<preset>-<mode>-s<seed>``, numbered when taken)."""
    out = []
    for record in records:
        mode = record.config.get("simulated", {}).get("mode", "sim")
        base = folder / f"{record.strategy}-{Path(record.preset).stem}-{mode}-s{record.seed}"
        path, n = base, 2
        while path.exists():
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
        path.mkdir(parents=True)
        record.save(path / "run_record.json")
        out.append(path)
    return out


def write_replay(checks: Sequence[Check], out: Path, *, results_dir: Path | None = None,
                 tracking: bool = True) -> tuple[str, Comparison | None]:
    """validation.md/.csv, a Gantt per strategy (measured above, simulated below), the simulated
    runs' folders and their comparison."""
    out.mkdir(parents=True, exist_ok=True)
    table = validation_table(checks)
    lines = validation_summary(checks)
    text = ("# Simulated (replay mode): each measured run's decisions, replayed with measured costs\n\n"
            "Costs come from the run's own record, from the other seeds of its strategy at the same slots "
            "(held out), or from its strategy's runs at other slot counts (cross-shape). Each prediction is "
            "the median of the simulations' figures.\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
            + table.markdown())
    (out / "validation.md").write_text(text)
    (out / "validation.csv").write_text(table.csv())
    own = [c for c in checks if c.basis == "own record" and c.simulated is not None]
    shown: set[str] = set()
    for check in own:
        if check.strategy in shown:
            continue
        shown.add(check.strategy)
        plots.gantt({f"{check.strategy} seed {check.seed}, measured": check.record,
                     f"{check.strategy} seed {check.seed}, SIMULATED (replay)": check.simulated},
                    out / f"gantt-{check.strategy}.png")
    comparison = None
    keyed = {(c.strategy, c.seed): c.simulated for c in own if c.simulated is not None}
    if keyed and len({c.strategy for c in own}) > 1:
        folders = write_records(list(keyed.values()), out / "runs")
        comparison = compare(folders, out=out / "comparison", results_dir=results_dir, tracking=tracking,
                             banner="**SIMULATED (replay mode)**: every run below is a simulation of a measured run "
                                    "(its decisions, with costs fitted from its own record); see ../validation.md.",
                             tags={"simulated": "replay"})
    return text, comparison


def write_what_if(records: Sequence[RunRecord], out: Path, banner: str, *, results_dir: Path | None = None,
                  tracking: bool = True) -> Comparison:
    folders = write_records(records, out / "runs")
    return compare(folders, out=out / "comparison", results_dir=results_dir, tracking=tracking,
                   banner=banner, tags={"simulated": "what-if"})


def write_scaling(points: Sequence[Point], out: Path, banner: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = scaling_table(points)
    text = f"# Scaling (simulated, what-if mode)\n\n{banner}\n\n{table.markdown()}\n![scaling](scaling.png)\n"
    (out / "scaling.md").write_text(text)
    (out / "scaling.csv").write_text(table.csv())
    plots.scaling(list(points), out / "scaling.png")
    return text

