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


# --------------------------------------------------------------------------- comparison

COMPARISON_COLUMNS = [
    ("strategy", "strategy"), ("trials", "trials"), ("wall_s", "wall (s)"), ("sum_runtime_s", "Σ trial runtime (s)"),
    ("speedup", "Σ/wall"), ("mean_concurrency", "mean at once"), ("peak_concurrency", "peak at once"),
    ("slots", "slots"), ("utilization", "slot utilization"), ("completed_all_iterations", "trials with all iterations"),
    ("early_stopped", "stopped early"), ("early_stop_saved_s", "saved by early stop (s)"), ("exploits", "exploits"),
    ("inherited_s", "inherited by exploits (s)"), ("distinct_configs", "distinct configs"),
    ("best_eval_loss", "best eval_loss"), ("slot_s_to_manual_best", "trial-s to manual best"),
]


def comparison_table(summaries: list[Any]) -> Table:
    rows = []
    for s in summaries:
        row = s.as_row()
        cells = []
        for key, _ in COMPARISON_COLUMNS:
            value = row[key]
            if key == "slot_s_to_manual_best" and value is None:
                value = "never" if "manual_best_eval_loss" in s.extra else ""
            elif key == "utilization":
                value = f"{value:.0%}"
            elif isinstance(value, float) and key != "best_eval_loss":
                value = round(value, 2)
            cells.append(value)
        rows.append(cells)
    return Table("comparison", "Strategies side by side", [title for _, title in COMPARISON_COLUMNS], rows)


def quiz_markdown(summaries: list[Any]) -> str:
    from harness.analysis import q1_decomposition, quiz_q1, quiz_q2

    by_name = {s.strategy: s for s in summaries}
    lines = ["## Quiz answers, from the measurements", ""]
    lines += ["### Q1: why is the job so much shorter than the sum of the trials' runtimes?", ""]
    for s in summaries:
        verdicts, conclusion = quiz_q1(s)
        d = q1_decomposition(s)
        lines.append(f"**{s.strategy}**: manual-equivalent {d['manual_equivalent_s']:.1f} s = wall {d['wall_s']:.1f} s "
                     f"+ concurrency {d['saved_by_concurrency_s']:.1f} s + early stopping "
                     f"{d['saved_by_early_stopping_s']:.1f} s + exploitation {d['saved_by_exploitation_s']:.1f} s "
                     f"- overhead {d['overhead_s']:.1f} s. The numbers support: {conclusion}.")
        lines.append("")
        lines += [f"- {v.option} ({v.holds}): {v.text} {v.evidence}." for v in verdicts]
        lines.append("")
    pbt = by_name.get("pbt")
    lines += ["### Q2: what does PBT offer over manual tuning?", ""]
    if pbt is None:
        lines.append("No PBT run among the compared records: nothing to answer.")
    else:
        others = [s for s in summaries if s.strategy != "pbt"]
        for v in quiz_q2(pbt, by_name.get("manual"), others):
            lines.append(f"- {v.option} ({v.holds}): {v.text} {v.evidence}.")
        lines += ["", "The exercise's key calls Q1 'C' and credits PBT with early stopping; where the rows above "
                  "say 'partly' or 'no', the measurements disagree with that key, and this report follows them."]
    return "\n".join(lines) + "\n"


_STATUS_COLOURS = {"TERMINATED": "tab:green", "ERROR": "tab:red", "RUNNING": "tab:orange", "PENDING": "tab:gray"}


def plot_gantt(records: dict[str, RunRecord], path: Path) -> Path:
    """One bar per busy interval of each trial, coloured by the trial's final status; exploits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.analysis import early_stop_savings, planned_iterations, trial_intervals

    fig, axes = plt.subplots(len(records), 1, figsize=(11, 1.2 + 0.35 * sum(len(r.trials) for r in records.values())),
                             squeeze=False)
    for ax, (name, rec) in zip(axes[:, 0], records.items()):
        trials = sorted(rec.trials, key=lambda t: t.started_at or 0)
        planned = planned_iterations(rec)
        for y, t in enumerate(trials):
            colour = _STATUS_COLOURS.get(t.status, "tab:gray")
            if t.status == "TERMINATED" and t.iterations < planned:
                colour = "tab:olive"  # stopped early by the scheduler
            spans = [(s - rec.started_at, e - s) for s, e in trial_intervals(t, rec.started_at, rec.finished_at)]
            ax.broken_barh(spans, (y - 0.35, 0.7), color=colour)
            for row in t.history:
                if row.get("exploited_from"):
                    start = row["received_at"] - (row.get("time_this_iter_s") or 0) - rec.started_at
                    ax.plot(start, y, marker="v", color="black", markersize=6)
        ax.set_yticks(range(len(trials)), [t.trial_id[-5:] for t in trials], fontsize=7)
        stopped, saved = early_stop_savings(rec)
        ax.set_title(f"{name}: wall {rec.wall_s:.0f} s, {len(trials)} trials"
                     + (f", {stopped} stopped early" if stopped else "")
                     + (f", {len(rec.exploits())} exploits (▼)" if rec.exploits() else ""), fontsize=9, loc="left")
        ax.set_xlim(0, max(rec.wall_s, 1))
    axes[-1, 0].set_xlabel("seconds since job start (green: all iterations, olive: stopped early, red: error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(records: dict[str, RunRecord], path: Path) -> Path:
    """eval_loss over iterations, one line per trial, one panel per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(4 * len(records), 3.4), squeeze=False, sharey=True)
    for ax, (name, rec) in zip(axes[0], records.items()):
        for t in rec.trials:
            xs = [row["iteration"] for row in t.history if row.get("eval_loss") is not None]
            ys = [row["eval_loss"] for row in t.history if row.get("eval_loss") is not None]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
    axes[0, 0].set_ylabel("eval_loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lineage(record: RunRecord, path: Path) -> Path:
    """PBT lineage: a row per trial over iterations; an arrow from donor to receiver at each exploit,
    labelled with the receiver's new lr / batch size / weight decay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(record.trials, key=lambda t: t.trial_id)
    rows = {t.trial_id: y for y, t in enumerate(trials)}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.7 * len(trials)))
    for t in trials:
        its = [row["iteration"] for row in t.history]
        ax.plot(its, [rows[t.trial_id]] * len(its), marker="o", color="tab:blue", linewidth=1)
        for row in t.history:
            ax.annotate(f"{row['eval_loss']:.2f}", (row["iteration"], rows[t.trial_id]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=6)
    for e in record.exploits():
        if e["donor"] not in rows:
            continue
        x = e["from_iteration"]
        ax.annotate("", xy=(x + 0.5, rows[e["trial"]]), xytext=(x, rows[e["donor"]]),
                    arrowprops=dict(arrowstyle="->", color="tab:red"))
        c = e["config"]
        ax.annotate(f"lr {c['lr']:.2e}, bs {c['per_device_train_batch_size']}, wd {c['weight_decay']:g}",
                    (x + 0.5, rows[e["trial"]]), textcoords="offset points", xytext=(4, -10), fontsize=6,
                    color="tab:red")
    ax.set_yticks(range(len(trials)), [t.trial_id for t in trials], fontsize=7)
    ax.set_xticks(range(0, int(record.config.get("train", {}).get("iterations", 1)) + 1))
    ax.set_xlabel("iteration (red arrow: the receiver restarts from the donor's checkpoint with mutated values)")
    ax.set_title(f"PBT lineage: {len(record.exploits())} exploits", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(records: dict[str, RunRecord], summaries: list[Any], out: Path) -> tuple[str, list[Path]]:
    """comparison.md, comparison.csv and the PNG plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(summaries)
    files = [out / "comparison.csv", out / "comparison.md"]
    files[0].write_text(table.csv())
    plots = [plot_gantt(records, out / "gantt.png"), plot_losses(records, out / "eval_loss.png")]
    if "pbt" in records:
        plots.append(plot_lineage(records["pbt"], out / "pbt_lineage.png"))
    sources = "\n".join(f"- {s.strategy}: `{s.run_dir}`" for s in summaries)
    text = (f"# Strategy comparison\n\nRun records compared:\n{sources}\n\n{table.markdown()}\n"
            f"{quiz_markdown(summaries)}\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    files[1].write_text(text)
    return text, files + plots
