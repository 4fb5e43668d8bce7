"""The seed exercise's result tables, as markdown and CSV, from a run record (never the console)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.records import RunRecord

TABLES_DIR = "tables"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    header: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        def cell(v: Any) -> str:
            return _fmt(v).replace("|", "\\|")

        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows([[_fmt(v, precise=True) for v in row] for row in self.rows])
        return buf.getvalue()


def _fmt(v: Any, precise: bool = False) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if precise:
            return repr(v)
        return f"{v:.3e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.4f}"
    return "" if v is None else str(v)


def timestamp(ts: float) -> str:
    """The seed log's format: ``yyyy-mm-dd hh:mm:ss +zzzz`` in local time."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{seconds:.1f} s ({s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d})"


def job_table(record: RunRecord) -> Table:
    return Table(
        "job", "Job timing", ["field", "value"],
        [["job start", timestamp(record.started_at)],
         ["job finish", timestamp(record.finished_at)],
         ["total job time", duration(record.wall_s)]],
    )


def trials_table(record: RunRecord) -> Table:
    rows = []
    for t in sorted(record.trials, key=lambda t: t.name):
        cfg = t.final_config
        rows.append([
            t.name, t.status, cfg.get("lr"), cfg.get("per_device_train_batch_size"), cfg.get("weight_decay"),
            t.iterations, round(t.runtime_s, 2), t.eval_loss, len(t.exploits),
        ])
    return Table(
        "trials", "Trials (hyperparameters as at the end of each trial)",
        ["trial", "status", "lr", "batch size", "weight decay", "iterations", "total time (s)", "eval_loss", "exploits"],
        rows,
    )


def best_table(record: RunRecord) -> Table:
    best = record.best_trial()
    if best is None:
        return Table("best", "Best trial", ["field", "value"], [["best trial", "none: no trial reported a result"]])
    cfg = best.final_config
    return Table(
        "best", "Best trial", ["field", "value"],
        [["trial", best.name],
         ["best lr", cfg["lr"]],
         ["best batch size", cfg["per_device_train_batch_size"]],
         ["best weight decay", cfg["weight_decay"]],
         ["best eval loss", best.eval_loss],
         ["total runtime (s)", round(best.runtime_s, 2)],
         ["epochs", best.last.get("epoch")],
         ["iterations", best.iterations]],
    )


def tables(record: RunRecord) -> list[Table]:
    return [job_table(record), trials_table(record), best_table(record)]


def write_tables(record: RunRecord, run_dir: str | Path) -> tuple[str, Path]:
    """Write ``tables/<name>.csv`` and ``tables/results.md``; returns (markdown, folder)."""
    out = Path(run_dir) / TABLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for table in tables(record):
        (out / f"{table.name}.csv").write_text(table.csv())
        parts.append(table.markdown())
    text = f"## {record.strategy} / {record.preset} (seed {record.seed})\n\n" + "\n".join(parts)
    (out / "results.md").write_text(text)
    return text, out
