"""The seed exercise's result tables, as markdown and CSV, from a run record (never the console)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import strategies
from harness.contract.iteration import PHASES
from harness.contract.record import RunRecord, Status
from harness.reporting import quiz
from harness.reporting.seeds import ALPHA, MEASURES, pairwise, ranking


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
    rows = [["job start", timestamp(record.started_at)],
            ["job finish", timestamp(record.finished_at)],
            ["total job time", duration(record.wall_s)]]
    for r in record.resumes:  # one run, continued: what each fault cost
        rows.append(["resumed", f"{timestamp(r['at'])} after {r['down_s']:.1f} s down; {r['redone_iterations']} "
                                f"iteration(s) trained again ({r['redone_s']:.1f} trial-s)"])
    if record.rerun_iterations:  # both rows are in run_record.json: the trial's history and its superseded rows
        again = [f"{t.label} {r.iteration} (first from {r.started_from or '?'})" for t in record.trials
                 for r in t.superseded]
        again += [f"{t.label} {r.iteration} (discarded trial)" for t in record.discarded for r in t.all_rows]
        rows.append(["iterations run twice", f"{record.rerun_iterations}, counted in the budget: {', '.join(again)}"])
    if record.stopped:
        rows.append(["stopped", f"{record.stopped}: continue with python -m harness run --resume <this run folder>"])
    errored = [t.label for t in record.trials if t.status == Status.ERROR]
    retries = sum(t.retries for t in record.trials)
    if errored or retries:
        rows.append(["trial failures", f"{retries} restarted from a checkpoint; {len(errored)} errored"
                                       + (f" ({', '.join(errored)})" if errored else "")])
    return Table("job", "Job timing", ["field", "value"], rows)


def trials_table(record: RunRecord) -> Table:
    rows = []
    for t in sorted(record.trials, key=lambda t: t.label):
        cfg = t.final_config
        rows.append([
            t.label, str(t.status), cfg.get("lr"), cfg.get("per_device_train_batch_size"), cfg.get("weight_decay"),
            t.iterations, round(t.runtime_s, 2), t.eval_loss, len(t.exploits), t.retries,
        ])
    return Table(
        "trials", "Trials (hyperparameters as at the end of each trial)",
        ["trial", "status", "lr", "batch size", "weight decay", "iterations", "total time (s)", "eval_loss", "exploits",
         "retries"],
        rows,
    )


def best_table(record: RunRecord) -> Table:
    best = record.best_trial()
    if best is None:
        return Table("best", "Best trial", ["field", "value"], [["best trial", "none: no trial reported a result"]])
    cfg = best.final_config
    return Table(
        "best", "Best trial", ["field", "value"],
        [["trial", best.label],
         ["best lr", cfg["lr"]],
         ["best batch size", cfg["per_device_train_batch_size"]],
         ["best weight decay", cfg["weight_decay"]],
         ["best eval loss", best.eval_loss],
         ["total runtime (s)", round(best.runtime_s, 2)],
         ["epochs", best.last.epoch if best.last else None],
         ["iterations", best.iterations]],
    )


def tables(record: RunRecord) -> list[Table]:
    return [job_table(record), trials_table(record), best_table(record)]


def write_tables(record: RunRecord, out: Path) -> tuple[str, Path]:
    """Write ``<out>/<name>.csv`` and ``<out>/results.md``; returns (markdown, folder)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for table in tables(record):
        (out / f"{table.name}.csv").write_text(table.csv())
        parts.append(table.markdown())
    text = f"## {record.strategy} / {record.preset} (seed {record.seed})\n\n" + "\n".join(parts)
    (out / "results.md").write_text(text)
    return text, out


# --------------------------------------------------------------------------- comparison

#: comparison.csv, one row per strategy: (column, title in comparison.md).
COMPARISON_COLUMNS = [
    ("strategy", "strategy"), ("role", "role"), ("seeds", "seeds"),
    ("budget_trial_iterations", "budget (trial-iterations)"), ("iterations_run", "iterations run"),
    ("comparable", "budget comparable"), ("slots", "slots"),
    ("best_eval_loss_median", "best eval_loss (median)"), ("best_eval_loss_ci_low", "interval low"),
    ("best_eval_loss_ci_high", "interval high"), ("interval", "interval kind (bootstrap: 95%, from 5 seeds; else range)"),
    ("ranks", "rank per seed"), ("mean_rank", "mean rank"),
    ("wall_s_median", "wall (s)"), ("wall_s_ci_low", "wall CI low"), ("wall_s_ci_high", "wall CI high"),
    ("sum_runtime_s_median", "Σ trial runtime (s)"), ("sum_runtime_s_ci_low", "Σ CI low"),
    ("sum_runtime_s_ci_high", "Σ CI high"), ("mean_concurrency", "mean at once (Σ/window)"),
    ("slot_utilization", "slot utilization"), ("cpu_utilization", "CPU utilization (of the CPUs held)"),
    ("gpu_utilization", "GPU utilization (of the GPUs held)"), ("gpus_per_trial", "GPUs per trial"),
    ("wall_utilization", "Σ/(wall x slots)"),
    ("pure_s", "train+eval (s)"), ("overhead_s", "overhead (s)"), ("overhead_ratio", "overhead ratio"),
    ("first_iteration_ratio", "1st/later iteration"), ("early_stop_avoided_s", "avoided by early stop (trial-s)"),
    ("discarded_s", "discarded by exploits (trial-s)"), ("exploits", "exploits"),
    ("distinct_configs", "distinct configs"), ("errored", "errored trials"), ("retries", "trial retries"),
    ("resumes", "resumes"), ("rerun_iterations", "iterations run twice"), ("time_lost_s", "time lost to faults (s)"),
]


def device_share(value: float, gpus: float | None = None) -> str:
    """A device utilization as the comparison shows it: a percentage; "no GPU" where the trials
    had none (``gpus`` 0); "n/a" where the records do not say (an older harness, no NVML)."""
    if not math.isnan(value):
        return f"{value:.0%}"
    return "no GPU" if gpus == 0 else "n/a"


def comparison_rows(aggregates: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for a in aggregates:
        row: dict[str, Any] = {
            "strategy": a.strategy,
            "role": strategies.REGISTRY[a.strategy].role if a.strategy in strategies.REGISTRY else "",
            "seeds": " ".join(map(str, a.seeds)),
            "comparable": "yes" if a.comparable else "no",
            "ranks": " ".join(f"{seed}:{a.ranks[seed]:g}" for seed in a.seeds if seed in a.ranks),
            "mean_rank": a.mean_rank,
            "interval": a.estimates["best_eval_loss"].kind,
        }
        for key, est in a.estimates.items():
            row.update({f"{key}_median": est.median, f"{key}_ci_low": est.low, f"{key}_ci_high": est.high})
        for key, value in a.medians.items():
            row.setdefault(key, value)
        rows.append(row)
    return rows


def comparison_table(aggregates: list[Any]) -> Table:
    """The markdown view of comparison.csv: one row per strategy, intervals beside their medians."""

    def num(value: Any, digits: int = 1) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    def interval(a: Any, key: str, digits: int) -> str:
        est = a.estimates[key]
        if est.kind not in ("bootstrap", "range") or est.low == est.high:
            return num(est.median, digits)
        name = "95% CI" if est.kind == "bootstrap" else "range"
        return f"{num(est.median, digits)} ({name} {num(est.low, digits)} to {num(est.high, digits)})"

    rows = []
    for a, row in zip(aggregates, comparison_rows(aggregates)):
        rows.append([
            row["strategy"], row["role"], row["seeds"],
            f"{num(row['iterations_run'], 0)} / {num(row['budget_trial_iterations'], 0)}"
            + ("" if row["comparable"] == "yes" else " (not comparable)"),
            num(row["slots"], 0), interval(a, "best_eval_loss", 4), row["ranks"], num(row["mean_rank"], 2),
            interval(a, "wall_s", 1), interval(a, "sum_runtime_s", 1), num(row["mean_concurrency"], 2),
            f"{row['slot_utilization']:.0%}" if not math.isnan(row["slot_utilization"]) else "",
            device_share(row["cpu_utilization"]), device_share(row["gpu_utilization"], row["gpus_per_trial"]),
            num(row["overhead_ratio"], 2), num(row["first_iteration_ratio"], 2), num(row["early_stop_avoided_s"]),
            num(row["discarded_s"]), num(row["exploits"], 0), num(row["distinct_configs"], 0),
            num(row["errored"], 0), num(row["retries"], 0), num(row["rerun_iterations"], 0), num(row["time_lost_s"]),
        ])
    return Table("comparison", "Strategies side by side (medians across seeds; a 95% bootstrap interval (95% CI) "
                 "from 5 seeds, the range of the values below that)",
                 ["strategy", "role", "seeds", "iterations run / budget", "slots", "best eval_loss", "rank per seed",
                  "mean rank",
                  "wall (s)", "Σ trial runtime (s)", "trials at once (Σ/window)", "slot utilization",
                  "CPU utilization (of the CPUs held)", "GPU utilization (of the GPUs held)",
                  "overhead ratio", "1st/later iteration", "avoided by early stop (trial-s)",
                  "discarded by exploits (trial-s)", "exploits", "distinct configs", "errored trials",
                  "trial retries", "iterations run twice", "time lost to faults (s)"], rows)


def comparison_csv(aggregates: list[Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([k for k, _ in COMPARISON_COLUMNS])
    for row in comparison_rows(aggregates):
        writer.writerow([_fmt(row.get(k), precise=True) for k, _ in COMPARISON_COLUMNS])
    return buf.getvalue()


def runs_table(aggregates: list[Any]) -> Table:
    rows = [[s.strategy, s.seed, s.iterations_run, *(f"{v:.1f}" for v in (s.wall_s, s.setup_s, s.trial_window_s,
                                                                           s.teardown_s, s.sum_runtime_s)),
             s.best_eval_loss, s.run_dir]
            for a in aggregates for s in a.runs]
    return Table("runs", "Every run: wall = set-up + trial window + teardown",
                 ["strategy", "seed", "iterations run", "wall (s)", "set-up (s)", "trial window (s)", "teardown (s)",
                  "Σ trial runtime (s)", "best eval_loss", "run folder"], rows)


def phases_table(aggregates: list[Any]) -> Table:
    rows = []
    for a in aggregates:
        runs = a.runs
        per = {p: sum(s.phases.get(p, 0.0) for s in runs) / len(runs) for p in PHASES}
        rows.append([a.strategy, *(f"{per[p]:.1f}" for p in PHASES), f"{a['pure_s']:.1f}", f"{a['overhead_s']:.1f}",
                     f"{a['overhead_ratio']:.2f}"])
    return Table("phases", "Where the trial time went (trial-seconds per run, mean across seeds)",
                 ["strategy", *PHASES, "pure train+eval", "overhead", "overhead ratio = wall / (pure / slots)"], rows)


def pairwise_table(aggregates: list[Any]) -> Table:
    """Every pair of comparable strategies, paired by seed (:mod:`harness.reporting.seeds`)."""
    rows = []
    for key, (measure, _, _) in MEASURES.items():
        for t in pairwise(aggregates, key):
            mean = sum(t.differences) / len(t.differences) if t.differences else math.nan
            rows.append([t.a, measure, t.verdict(), t.b, "primary" if t.primary else "exploratory (Holm)", t.n,
                         mean, t.p, t.p_adjusted, t.alpha])
    return Table("pairwise", f"Pairwise, paired by seed: exact sign-flip permutation test on the per-seed differences, "
                 f"α = {ALPHA:g}; PBT against each baseline is primary, every other pair exploratory (Holm-adjusted); "
                 "comparable budgets only",
                 ["strategy", "on", "verdict", "than", "test", "seeds", "mean difference (strategy - than)", "p",
                  "p (Holm)", "α"], rows)


def ranking_markdown(aggregates: list[Any]) -> str:
    """Average ranks per seed across all comparable strategies, Friedman's test where it can decide."""
    r = ranking(aggregates)
    lines = ["### All strategies at once: average rank of the best metric per seed (1 is best)", ""]
    if not r.seeds:
        return "\n".join(lines + ["No seed was run by every comparable strategy.", ""]) + "\n"
    lines.append(", ".join(f"{name} {rank:.2f}" for name, rank in sorted(zip(r.strategies, r.mean_ranks),
                                                                         key=lambda e: e[1]))
                 + f" (over {len(r.seeds)} seed{'s' * (len(r.seeds) != 1)} every strategy ran).")
    if r.tested:
        decided = "the strategies differ" if r.friedman_p <= r.alpha else "no difference among the strategies is shown"
        lines += ["", f"Friedman test: χ² = {r.friedman_statistic:.2f}, p = {r.friedman_p:.3g} (α = {r.alpha:g}): "
                      f"{decided}. Nemenyi critical difference of the average ranks: {r.critical_difference:.2f} "
                      "(two strategies whose ranks differ by less are joined by a bar in critical_difference.png)."]
    else:
        lines += ["", r.why_not_tested() + "."]
    return "\n".join(lines) + "\n"


def quiz_markdown(aggregates: list[Any]) -> str:
    def verdict_lines(verdicts: list[Any]) -> list[str]:
        return [f"- **{v.option} ({v.holds})** {v.text} {v.evidence}. *Rule: {v.rule}.*" for v in verdicts]

    lines = ["## The exercise's questions, answered from these numbers", "", f"### Q1: {quiz.Q1}", ""]
    for a in aggregates:
        verdicts, conclusion = quiz.q1(a)
        lines += [f"**{a.strategy}** ({len(a.runs)} seed{'s' * (len(a.runs) != 1)}): {conclusion}.", ""]
        lines += verdict_lines(verdicts) + [""]
    lines += [f"### Q2: {quiz.Q2}", ""]
    spec = strategies.REGISTRY
    candidates = [a for a in aggregates if a.strategy in spec and spec[a.strategy].exploits]
    manuals = [a for a in aggregates if a.strategy in spec and spec[a.strategy].sequential]
    if not candidates or not manuals:
        lines.append("Q2 needs a population-based run and a sequential grid run among the compared records.")
    for c in candidates:
        for m in manuals:
            note = "" if c.comparable and m.comparable else " (budgets differ by more than 10%: not comparable)"
            lines += [f"**{c.strategy} vs {m.strategy}**{note}", ""]
            lines += verdict_lines(quiz.q2(c, m, aggregates)) + [""]
    return "\n".join(lines) + "\n"


def write_comparison(records: dict[tuple[str, int], RunRecord], aggregates: list[Any],
                     out: Path, banner: str = "") -> tuple[str, list[Path]]:
    """comparison.md, comparison.csv, runs.csv and the PNG plots in ``out``; ``records`` maps
    (strategy, seed) to its record; ``banner`` comes first after the title."""
    from harness.reporting import plots  # matplotlib: only a comparison draws

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "comparison.csv", out / "comparison.md", out / "runs.csv"]
    files[0].write_text(comparison_csv(aggregates))
    runs = runs_table(aggregates)
    files[2].write_text(runs.csv())
    first = {a.strategy: records[(a.strategy, a.runs[0].seed)] for a in aggregates}
    figures = [plots.anytime_curves(aggregates, records, out / "anytime.png"),
               plots.anytime_rank(aggregates, records, out / "anytime_rank.png"), plots.gantt(first, out / "gantt.png"),
               plots.losses(first, out / "eval_loss.png")]
    rank = ranking(aggregates)
    if rank.tested:
        figures.append(plots.critical_difference(rank, out / "critical_difference.png"))
    for name, rec in first.items():
        if name in strategies.REGISTRY and strategies.REGISTRY[name].exploits:
            figures.append(plots.lineage(rec, out / f"{name}_lineage.png"))
    n_seeds = sorted({len(a.runs) for a in aggregates})
    opening = f"{banner}\n\n" if banner else ""
    text = (f"# Strategy comparison\n\n{opening}{len(aggregates)} strategies, {'/'.join(map(str, n_seeds))} seed(s) each. "
            "Budgets are compared on the trial-iterations each run really trained; a strategy whose budget "
            "differs from the most common one by more than 10% is shown but not ranked. Slot utilization says how "
            "long the trials held their slots; CPU and GPU utilization, how busy they kept the CPUs and GPUs they "
            "held, while they held them (their own processes and GPUs only, not the node's).\n\n"
            f"{comparison_table(aggregates).markdown()}\n{pairwise_table(aggregates).markdown()}\n"
            f"{ranking_markdown(aggregates)}\n"
            f"{phases_table(aggregates).markdown()}\n{runs.markdown()}\n{quiz_markdown(aggregates)}\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n")
    files[1].write_text(text)
    return text, files + figures
