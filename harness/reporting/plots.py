"""The comparison's plots (PNG): each trial's busy time, eval_loss per iteration, a population's
lineage, and the anytime curves across seeds. Matplotlib draws off-screen (Agg)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.contract.record import RunRecord, Status  # noqa: E402
from harness.reporting.analysis import (  # noqa: E402
    anytime,
    anytime_by_budget,
    early_stopping,
    planned_iterations,
    trial_intervals,
)
from harness.reporting.seeds import FRACTIONS, Ranking, anytime_ranks  # noqa: E402

_STATUS_COLOURS = {"TERMINATED": "tab:green", "ERROR": "tab:red", "RUNNING": "tab:orange", "PENDING": "tab:gray"}


def gantt(records: dict[str, RunRecord], path: Path) -> Path:
    """One bar per busy interval of each trial, coloured by the trial's final status; exploits marked."""

    fig, axes = plt.subplots(len(records), 1, figsize=(11, 1.2 + 0.35 * sum(len(r.trials) for r in records.values())),
                             squeeze=False)
    for ax, (name, rec) in zip(axes[:, 0], records.items()):
        trials = sorted(rec.trials, key=lambda t: t.started_at or 0)
        planned = planned_iterations(rec)
        for y, t in enumerate(trials):
            colour = _STATUS_COLOURS.get(t.status, "tab:gray")
            if t.status == Status.TERMINATED and t.iterations < planned:
                colour = "tab:olive"  # stopped early by the scheduler
            spans = [(s - rec.started_at, e - s) for s, e in trial_intervals(t, rec.started_at, rec.finished_at)]
            ax.broken_barh(spans, (y - 0.35, 0.7), color=colour)
            for row in t.history:
                if row.exploited_from and row.received_at is not None:
                    start = row.received_at - row.seconds - rec.started_at
                    ax.plot(start, y, marker="v", color="black", markersize=6)
        ax.set_yticks(range(len(trials)), [t.label for t in trials], fontsize=7)
        stopped, _, _ = early_stopping(rec)
        ax.set_title(f"{name}: wall {rec.wall_s:.0f} s, {len(trials)} trials"
                     + (f", {stopped} stopped early" if stopped else "")
                     + (f", {len(rec.exploits())} exploits (▼)" if rec.exploits() else ""), fontsize=9, loc="left")
        ax.set_xlim(0, max(rec.wall_s, 1))
    axes[-1, 0].set_xlabel("seconds since job start (green: all iterations, olive: stopped early, red: error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def losses(records: dict[str, RunRecord], path: Path) -> Path:
    """eval_loss over iterations, one line per trial, one panel per strategy."""

    fig, axes = plt.subplots(1, len(records), figsize=(4 * len(records), 3.4), squeeze=False, sharey=True)
    for ax, (name, rec) in zip(axes[0], records.items()):
        for t in rec.trials:
            xs = [row.iteration for row in t.history if row.eval_loss is not None]
            ys = [row.eval_loss for row in t.history if row.eval_loss is not None]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
    axes[0, 0].set_ylabel("eval_loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lineage(record: RunRecord, path: Path) -> Path:
    """Lineage of a population-based run: a row per trial over iterations; an arrow from donor to receiver at each exploit,
    labelled with the receiver's new lr / batch size / weight decay."""

    trials = sorted(record.trials, key=lambda t: t.trial_id)
    rows = {t.trial_id: y for y, t in enumerate(trials)}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.7 * len(trials)))
    for t in trials:
        its = [row.iteration for row in t.history]
        ax.plot(its, [rows[t.trial_id]] * len(its), marker="o", color="tab:blue", linewidth=1)
        for row in t.history:
            if row.eval_loss is not None:
                ax.annotate(f"{row.eval_loss:.2f}", (row.iteration, rows[t.trial_id]), textcoords="offset points",
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
    ax.set_yticks(range(len(trials)), [t.label for t in trials], fontsize=7)
    ax.set_xticks(range(0, int(record.config.get("train", {}).get("iterations", 1)) + 1))
    ax.set_xlabel("iteration (red arrow: the receiver restarts from the donor's checkpoint with mutated values)")
    ax.set_title(f"{record.strategy} lineage: {len(record.exploits())} exploits", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def anytime_curves(aggregates: list[Any], records: dict[tuple[str, int], RunRecord], path: Path) -> Path:
    """Best eval_loss so far against wall time and against cumulative trial-seconds, per strategy:
    the median across seeds, with a band from the best to the worst seed."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for colour, a in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3, aggregates):
        curves = [anytime(records[(a.strategy, s.seed)]) for s in a.runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        for ax, column, label in ((axes[0], 0, "seconds since the job started"),
                                  (axes[1], 1, "cumulative trial-seconds")):
            end = max(c[-1][column] for c in curves)
            xs = np.linspace(0, end, 200)
            ys = []
            for c in curves:
                x = np.array([p[column] for p in c])
                y = np.array([p[2] for p in c])
                idx = np.searchsorted(x, xs, side="right") - 1
                ys.append(np.where(idx >= 0, y[np.clip(idx, 0, None)], np.nan))
            ys_arr = np.array(ys)
            with np.errstate(all="ignore"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a first result
                    median = np.nanmedian(ys_arr, axis=0)
                    low, high = np.nanmin(ys_arr, axis=0), np.nanmax(ys_arr, axis=0)
            ax.step(xs, median, where="post", color=colour, label=f"{a.strategy} (n={len(curves)})")
            ax.fill_between(xs, low, high, step="post", color=colour, alpha=0.15)
            ax.set_xlabel(label)
    axes[0].set_ylabel("best eval_loss so far")
    axes[0].legend(fontsize=8)
    fig.suptitle("Anytime performance: median across seeds, band from best to worst seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def anytime_rank(aggregates: list[Any], records: dict[tuple[str, int], RunRecord], path: Path) -> Path:
    """Syne Tune's normalized anytime plot: the average rank (over seeds) of each strategy's best
    metric so far, against the fraction of its budget (trial-iterations) spent."""
    curves = {(a.strategy, s.seed): anytime_by_budget(records[(a.strategy, s.seed)]) for a in aggregates for s in a.runs}
    budgets = {key: float(records[key].budget_trial_iterations or max(1, len(curves[key]))) for key in curves}
    ranks = anytime_ranks(curves, budgets, aggregates[0].mode if aggregates else "min")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, values in ranks.items():
        ax.step(FRACTIONS, values, where="post", label=name)
    ax.set_xlabel("fraction of the budget spent (trial-iterations run / budget)")
    ax.set_ylabel("average rank of the best metric so far (1 is best)")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    n = len({seed for _, seed in curves})
    ax.set_title(f"Anytime rank, normalized by budget ({n} seed{'s' * (n != 1)}; no result yet ranks last)",
                 fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def critical_difference(rank: Ranking, path: Path) -> Path:
    """Demšar's critical-difference diagram: average ranks on an axis, strategies whose ranks differ
    by less than the Nemenyi critical difference joined by a bar (drawn here: the few lines of it
    do not justify a plotting dependency such as scikit-posthocs)."""
    order = sorted(zip(rank.mean_ranks, rank.strategies))
    k = len(order)
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.3 * k))
    ax.set_xlim(k + 0.2, 0.8)  # rank 1 on the right, as in Demšar's figures
    ax.set_ylim(-(k + 2) * 0.3, 1.2)
    ax.axhline(0, color="black", linewidth=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.1], color="black", linewidth=1)
        ax.text(r, 0.2, str(r), ha="center", fontsize=8)
    for i, (value, name) in enumerate(order):
        y = -(i + 1) * 0.3
        ax.plot([value, value, k + 0.2 if i < k / 2 else 0.8], [0, y, y], color="tab:blue", linewidth=0.8)
        ax.text(k + 0.15 if i < k / 2 else 0.85, y + 0.03, f"{name} ({value:.2f})", fontsize=8,
                ha="left" if i < k / 2 else "right")
    cd = rank.critical_difference
    ax.plot([1, 1 + cd], [0.8, 0.8], color="tab:red", linewidth=2)
    ax.text(1 + cd / 2, 0.9, f"CD = {cd:.2f}", ha="center", fontsize=8, color="tab:red")
    groups: list[tuple[int, int]] = []  # maximal runs of strategies within one CD of each other
    for i, (low, _) in enumerate(order):
        j = max(j for j, (v, _) in enumerate(order) if v - low < cd)
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    for bar, (i, j) in enumerate(groups):
        ax.plot([order[i][0] - 0.03, order[j][0] + 0.03], [-0.1 - 0.08 * bar] * 2, color="black", linewidth=3)
    ax.axis("off")
    ax.set_title(f"Critical difference (Nemenyi, α = {rank.alpha:g}, {len(rank.seeds)} seeds); Friedman p = "
                 f"{rank.friedman_p:.3g}", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling(points: list[Any], path: Path) -> Path:
    """Wall time and slot utilization against nodes (left) and against population (right), one
    line per strategy variant: where barriers, waves and start-up bite (simulated)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for col, sweep in enumerate(("nodes", "population")):
        group = [p for p in points if p.sweep == sweep]
        for variant in dict.fromkeys(p.variant for p in group):
            line = sorted((getattr(p, sweep), p.summary) for p in group if p.variant == variant)
            xs = [x for x, _ in line]
            axes[0, col].plot(xs, [s.wall_s / 60 for _, s in line], marker="o", label=variant)
            axes[1, col].plot(xs, [s.slot_utilization for _, s in line], marker="o", label=variant)
        for row in (0, 1):
            axes[row, col].set_xscale("log", base=2)
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("wall (min)")
        axes[1, col].set_ylabel("slot utilization")
        axes[1, col].set_ylim(0, 1.05)
        axes[1, col].set_xlabel(sweep)
        if group:
            fixed = (f"population {group[0].population}, more nodes" if sweep == "nodes"
                     else f"{group[0].nodes} nodes, larger populations")
            axes[0, col].set_title(fixed, fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("SIMULATED (what-if): wall and slot utilization", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
