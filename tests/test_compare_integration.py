"""The four strategies on the same trial at smoke scale, the comparison over their records, and
the reproducibility of the manual grid and of synchronous PBT's exploit decisions."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil

import pytest

from conftest import SMALL_BUDGET, only_run_dir, run_harness, serve_mlflow
from harness.reporting.analysis import summarize
from harness.contract.record import short_id
from harness.contract.rundir import RunDir
from harness.reporting.tracking import runs_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _run(tmp_path_factory, name: str, *args: str):
    results = tmp_path_factory.mktemp(name)
    done = run_harness(results, "--preset", "smoke", *SMALL_BUDGET, *args)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    run_dir = only_run_dir(results)
    return run_dir, RunDir(run_dir).record()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_pbt):
    return {
        "manual": _run(tmp_path_factory, "manual", "--strategy", "manual"),
        "fifo": _run(tmp_path_factory, "fifo", "--strategy", "fifo"),
        "asha": _run(tmp_path_factory, "asha", "--strategy", "asha"),
        "pbt": (smoke_pbt[2], smoke_pbt[3]),
        "pb2": _run(tmp_path_factory, "pb2", "--strategy", "pb2"),
    }


def test_every_strategy_spends_the_same_budget(runs):
    for name, (_, record) in runs.items():
        s = summarize(record)
        assert s.budget_trial_iterations == 12, name
        assert abs(s.iterations_run - 12) <= 1.2, (name, s.iterations_run)  # within 10%
    assert len(runs["pbt"][1].trials) == 4 and len(runs["manual"][1].trials) == 4


def test_manual_runs_one_trial_at_a_time_for_the_full_grid(runs):
    _, record = runs["manual"]
    s = summarize(record)
    assert s.trials == 4 and s.completed_all_iterations == 4
    assert s.peak_concurrency == 1
    # sequential: the trials' busy time fills their window (the rest is loading between combos)
    assert 0.85 <= s.sum_runtime_s / s.trial_window_s <= 1.0 + 1e-6
    assert len({(t.initial_config["per_device_train_batch_size"], t.initial_config["weight_decay"])
                for t in record.trials}) == 4


def test_fifo_runs_the_same_grid_concurrently(runs):
    _, manual = runs["manual"]
    _, record = runs["fifo"]
    s = summarize(record)
    assert {tuple(sorted(t.initial_config.items())) for t in record.trials} == \
        {tuple(sorted(t.initial_config.items())) for t in manual.trials}
    assert s.completed_all_iterations == 4 and s.early_stopped == 0 and s.exploits == 0
    assert s.peak_concurrency >= 2 and s.mean_concurrency > 1.3


def test_asha_samples_until_the_budget_is_spent_and_stops_trials_early(runs):
    _, record = runs["asha"]
    s = summarize(record)
    assert s.trials > 4, "ASHA buys more trials than the grid with the same budget"
    assert s.early_stopped > 0 and s.early_stop_avoided_s > 0
    assert min(t.iterations for t in record.trials) < 3


def test_pb2_explores_inside_the_users_space(runs):
    _, record = runs["pb2"]
    space = record.config["search"]
    assert record.exploits(), "synchronous PB2 with quantile 0.5 exploits every round"
    for trial in record.trials:
        for row in trial.history:
            assert space["lr_lower"] <= row.lr <= space["lr_upper"]
            assert row.per_device_train_batch_size in space["bs_choices"]
            assert row.weight_decay in space["wd_choices"]


def _compare(tmp_path, dirs, name="comparison"):
    """The comparison pipeline in this process (the CLI's own run of it: the ``comparison`` fixture)."""
    from harness.driver.compare import compare

    return compare(dirs, out=tmp_path / name).out


@pytest.fixture(scope="module")
def comparison(runs, tmp_path_factory):
    """``python -m harness compare`` over the five strategies' runs, as a user runs it: its output
    folder and what it printed (the MLflow UI's URLs among it)."""
    tmp = tmp_path_factory.mktemp("comparison")
    out = tmp / "comparison"
    done = run_harness(tmp, *(str(runs[name][0]) for name in runs), "--out", str(out), "--ui-port", "5123",
                       command="compare")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_compare_writes_one_row_per_strategy_with_budgets_intervals_and_plots(runs, comparison):
    out, _ = comparison
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert [r["strategy"] for r in rows] == ["manual", "fifo", "asha", "pbt", "pb2"]
    for r in rows:
        for column in ("budget_trial_iterations", "seeds", "best_eval_loss_median", "best_eval_loss_ci_low",
                       "best_eval_loss_ci_high", "slot_utilization", "cpu_utilization", "overhead_ratio"):
            assert r[column] != "", (r["strategy"], column)
        assert 0 < float(r["cpu_utilization"]) and r["gpu_utilization"] == "" and float(r["gpus_per_trial"]) == 0
        assert float(r["best_eval_loss_ci_low"]) <= float(r["best_eval_loss_median"]) <= float(r["best_eval_loss_ci_high"])
        assert r["comparable"] == "yes" and float(r["budget_trial_iterations"]) == 12
    text = (out / "comparison.md").read_text()
    assert "### Q1" in text and "### Q2" in text and "**pbt vs manual**" in text and "**pb2 vs manual**" in text
    assert "*Rule:" in text and "answer key" not in text.lower()
    header = next(line for line in text.splitlines() if line.startswith("| strategy | role |"))
    assert "| slot utilization | CPU utilization (of the CPUs held) | GPU utilization (of the GPUs held) |" in header, header
    assert "no GPU" in text and "device utilization while held" in text
    for png in ("anytime.png", "gantt.png", "eval_loss.png", "pbt_lineage.png", "pb2_lineage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MLflow (the store of the first run's results folder): one summary run per strategy
    uri = f"sqlite:///{runs['manual'][0].parent / 'mlflow.db'}"
    summaries = [r for r in runs_of("hpo-smoke", uri) if r.data.tags.get("kind") == "strategy-summary"]
    assert sorted(r.data.tags["strategy"] for r in summaries) == ["asha", "fifo", "manual", "pb2", "pbt"]
    for r in summaries:
        assert {"wall_s", "sum_runtime_s", "best_eval_loss", "best_eval_loss_ci_low", "slot_utilization",
                "overhead_ratio", "iterations_run"} <= set(r.data.metrics)


def _slowed(run_dir, dest, factor):
    """A copy of a run folder whose record says every second took ``factor`` seconds."""
    data = json.loads((run_dir / "run_record.json").read_text())
    t0 = data["started_at"]
    data["finished_at"] = t0 + (data["finished_at"] - t0) * factor
    for trial in data["trials"]:
        for row in trial["history"]:
            row["received_at"] = t0 + (row["received_at"] - t0) * factor
            row["time_this_iter_s"] *= factor
    dest.mkdir()
    (dest / "run_record.json").write_text(json.dumps(data))
    return dest


def _q2_a(text, candidate="pbt", manual="manual"):
    section = text.split(f"**{candidate} vs {manual}**", 1)[1]
    return re.search(r"^- \*\*A \(([^)]*)\)\*\*", section, re.M).group(1)


def _reseeded(run_dir, dest, seed):
    data = json.loads((run_dir / "run_record.json").read_text())
    data["seed"] = seed
    dest.mkdir()
    (dest / "run_record.json").write_text(json.dumps(data))
    return dest


def test_verdicts_follow_the_numbers_six_seeds_decide_two_or_three_of_six_do_not(runs, tmp_path):
    """Records edited as a reviewer would: six seeds per side (copies of the measured run under other
    seeds), as measured and with the grid's record slowed ten times. PBT's Q2-A verdict turns from
    "no" (longer) to "partly" (shorter, but it stopped nothing early) only when the grid is slower
    in all six seeds: slowed in three of six, or two seeds in all, decide nothing."""
    pbt_dir, manual_dir = runs["pbt"][0], runs["manual"][0]
    pbt = [pbt_dir] + [_reseeded(pbt_dir, tmp_path / f"pbt-{s}", s) for s in range(101, 106)]
    manual = [manual_dir] + [_reseeded(manual_dir, tmp_path / f"manual-{s}", s) for s in range(101, 106)]
    slow = [_slowed(d, tmp_path / f"{d.name}-slow", 10) for d in manual]
    as_measured = (_compare(tmp_path, pbt + manual, "as-measured") / "comparison.md").read_text()
    slowed = (_compare(tmp_path, pbt + slow, "slow-grid") / "comparison.md").read_text()
    assert (_q2_a(as_measured), _q2_a(slowed)) == ("no", "partly")
    assert "p = 0.0312" in slowed.split("**pbt vs manual**", 1)[1]
    half = _q2_a((_compare(tmp_path, pbt + slow[:3] + manual[3:], "half-slow") / "comparison.md").read_text())
    two = _q2_a((_compare(tmp_path, pbt[:2] + slow[:2], "two-seeds") / "comparison.md").read_text())
    assert half == two == "not distinguishable"


def test_compare_aggregates_seeds(runs, tmp_path):
    """Two seeds of each of two strategies (the second seed's records are copies with another seed,
    so the intervals are known): one row per strategy, both seeds listed and ranked."""
    dirs = []
    for name in ("manual", "pbt"):
        run_dir = runs[name][0]
        dirs += [run_dir, _reseeded(run_dir, tmp_path / f"{name}-seed7", 7)]
    out = _compare(tmp_path, dirs)
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO((out / "comparison.csv").read_text()))}
    assert set(rows) == {"manual", "pbt"}
    assert rows["pbt"]["seeds"] == "7 42"
    assert rows["pbt"]["ranks"] in ("7:1 42:1", "7:2 42:2")
    done = run_harness(tmp_path, str(dirs[0]), str(dirs[0]), command="compare")
    assert done.returncode == 2 and "two runs of strategy 'manual' with seed 42" in done.stderr


def test_population_larger_than_the_slots_keeps_one_warm_process_per_slot(runs):
    """4 trials on 2 slots, synchronous rounds: every round pauses all trials, and the harness keeps
    one trial process per slot alive across the barrier (Ray alone kept 2 of 4 busy). The fast test
    of what it relies on is tests/test_ray_compat.py; this is the behaviour a user sees."""
    for name in ("pbt", "pb2"):
        _, record = runs[name]
        assert len(record.trials) == 4 and record.slots == 2 and summarize(record).iterations_run == 12
        pids = {row.pid for t in record.trials for row in t.history}
        assert len(pids) == 2, f"{name}: {len(pids)} trial processes for 2 slots"


def test_the_grid_gives_identical_eval_loss_per_combo_in_one_process_and_under_ray(runs):
    """With a fixed seed the trial is deterministic: the manual grid (one combination after another
    in the driver) and FIFO (the same grid as Ray trials, in reused processes) give bit-identical
    losses for every combination, iteration by iteration."""
    def losses(record):
        return {tuple(sorted(t.initial_config.items())): [row.eval_loss for row in t.history] for t in record.trials}

    manual, fifo = losses(runs["manual"][1]), losses(runs["fifo"][1])
    assert len(manual) == 4 and manual == fifo


def _decisions(run_dir):
    """PBT's exploit decisions from Ray's policy log, with trial indices instead of random ids:
    (receiver, donor, the mutated config), in order. Ray's two iteration columns are left out:
    they are its bookkeeping at log time and vary with the order in which the driver processed a
    round's results (0 or 1 in runs that were otherwise identical); the iteration of the
    checkpoint that was really restored is compared from the run records below."""
    out = []
    for line in (run_dir / "ray" / "pbt_global.txt").read_text().splitlines():
        target, clone, _target_it, _clone_it, _old, new = json.loads(line)
        out.append((target.split("_")[0], clone.split("_")[0],
                    {k: round(v, 12) if isinstance(v, float) else v for k, v in new.items()}))
    return out


def _restored(run_dir):
    """Exploits as the trials saw them: receiver, donor, the donor checkpoint's iteration, and the
    eval_loss that followed (trial indices instead of random ids)."""
    record = RunDir(run_dir).record()
    return sorted(
        (t.label, short_id(row.exploited_from), row.segment_start_iteration, round(row.eval_loss, 6))
        for t in record.trials for row in t.history if row.exploited_from
    )


def test_synchronous_pbt_with_a_fixed_seed_repeats_its_exploit_decisions(smoke_pbt, tmp_path_factory):
    first_dir = smoke_pbt[2]
    second_dir, _ = _run(tmp_path_factory, "pbt-again", "--strategy", "pbt")
    first, second = _decisions(first_dir), _decisions(second_dir)
    assert first, "the smoke PBT run exploited nothing"
    assert first == second
    assert _restored(first_dir) == _restored(second_dir)


READ_METRICS = """async () => {
  // The compare view's Metrics section: a grid of names beside a grid of values, both virtualized
  // (react-virtualized renders only the cells in view), so scroll through both, match rows by
  // their offset, and key each value by its column offset (one column per run, in URL order).
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const names = grids.find(g => g.innerText.includes('best_eval_loss'));
  const values = grids[grids.indexOf(names) + 1];
  const seen = {};
  for (let y = 0; y <= names.scrollHeight; y += 150) {
    for (let x = 0; x <= values.scrollWidth; x += 150) {
      names.scrollTop = y; values.scrollTop = y; values.scrollLeft = x;
      await new Promise(r => setTimeout(r, 100));
      const rows = {};
      for (const c of names.querySelectorAll('[style*="top"]')) rows[c.style.top] = c.innerText.trim();
      for (const c of values.querySelectorAll('[style*="top"]')) {
        const name = rows[c.style.top];
        if (name) (seen[name] = seen[name] || {})[parseInt(c.style.left)] = c.innerText.trim();
      }
    }
  }
  return seen;
}"""


@pytest.fixture
def mlflow_server(runs):
    """A real `mlflow server` on 127.0.0.1 over the store the comparison runs wrote."""
    with serve_mlflow(runs["manual"][0].parent / "mlflow.db") as port:
        yield port


def test_the_printed_compare_url_shows_every_strategy_and_its_numbers_in_a_real_browser(comparison, mlflow_server,
                                                                                       tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    out, printed = comparison
    assert "http://127.0.0.1:5123/#/compare-runs?" in printed  # the UI's port it was given (--ui-port)
    lines = printed.replace(":5123/", f":{mlflow_server}/").splitlines()  # where this test's server listens
    url = next(lines[i + 1].strip() for i, line in enumerate(lines) if "the strategies side by side" in line)
    runs_url = next(lines[i + 1].strip() for i, line in enumerate(lines) if "training runs" in line)
    assert url.startswith(f"http://127.0.0.1:{mlflow_server}/#/compare-runs?")
    expected = {r["strategy"]: r for r in csv.DictReader(io.StringIO((out / "comparison.csv").read_text()))}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(url)
            page.get_by_text(f"Comparing {len(expected)} Runs", exact=False).first.wait_for(timeout=60_000)
            page.get_by_text("best_eval_loss_ci_high", exact=True).first.wait_for(timeout=60_000)
            run_names = page.locator("tr", has_text="Run Name:").first.locator("td, th").all_inner_texts()[1:]
            shown = page.evaluate(READ_METRICS)
            page.screenshot(path=str(tmp_path / "compare-view.png"), full_page=True)
            # the runs table opens with the harness's columns chosen
            page.goto(runs_url)
            page.get_by_text("Training runs", exact=True).first.wait_for(timeout=60_000)
            header = [h.strip() for h in page.get_by_role("columnheader").all_inner_texts()]
            for _ in range(60):
                if {"best_eval_loss", "wall_s", "slot_utilization"} <= set(header):
                    break
                page.wait_for_timeout(500)
                header = [h.strip() for h in page.get_by_role("columnheader").all_inner_texts()]
        finally:
            browser.close()

    # (the tag columns follow further right, outside the grid's rendered width)
    assert {"best_eval_loss", "wall_s", "sum_runtime_s", "slot_utilization", "budget_trial_iterations"} <= set(header), \
        header
    strategies_shown = [name.split(" (")[0] for name in run_names]
    assert sorted(strategies_shown) == sorted(expected), run_names
    columns = sorted(shown["best_eval_loss"])  # one x offset per run, in the order of run_names
    assert len(columns) == len(expected)
    for column, strategy in zip(columns, strategies_shown):
        row = expected[strategy]
        for metric, csv_column in (("best_eval_loss", "best_eval_loss_median"), ("wall_s", "wall_s_median"),
                                   ("sum_runtime_s", "sum_runtime_s_median"),
                                   ("budget_trial_iterations", "budget_trial_iterations"),
                                   ("slot_utilization", "slot_utilization")):
            # MLflow shows about four significant digits (three decimals below 1)
            value = float(row[csv_column])
            assert abs(float(shown[metric][str(column)]) - value) <= max(5.01e-4, 1e-3 * abs(value)), \
                (strategy, metric, shown[metric])


def _timeline(record) -> str:
    """One line per report of ``record``: when it arrived, its seconds and phases, where it ran."""
    lines = [f"\n{record.strategy}: started {record.started_at:.2f}, finished {record.finished_at:.2f}, "
             f"{len(record.discarded)} discarded trial(s)"]
    for trial in record.trials + record.discarded:
        for r in trial.all_rows:
            lines.append(f"  {short_id(trial.trial_id)} it {r.iteration} from {r.segment_start_iteration} "
                         f"donor {r.exploited_from or '-'} at {(r.received_at or 0) - record.started_at:7.2f} "
                         f"s {r.seconds:6.2f} pid {r.pid} {dict(r.phases)}")
    return "\n".join(lines) + "\n"


def test_the_simulator_replays_every_strategys_run_within_ten_percent(runs, tmp_path):
    """``python -m harness simulate replay`` on the five fresh runs: each run's decisions replayed
    with the costs of its own record reproduce its wall, Σ, concurrency and slot utilization. The
    suite runs two tests at once on 2 cores: a run whose trials measured load from outside it (the
    other test; their CPU time says so) is named disturbed, and only such a run may miss."""
    out = tmp_path / "replay"
    done = run_harness(tmp_path, "replay", *(str(runs[name][0]) for name in runs), "--node-cores", str(os.cpu_count()),
                       "--reps", "10", "--no-mlflow", "--out", str(out), command="simulate")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "validation.csv").open()))
    own = [r for r in rows if r["costs from"].startswith("own record")]
    assert {r["strategy"] for r in own} == set(runs)
    missed = [r["strategy"] for r in own if not r["within"].startswith("yes") and "disturbed" not in r["within"]]
    # every measure's error (the CSV repeats its "error" header) and the missed runs' own timelines,
    # so that a miss on a loaded CI machine says which measure and which segment
    assert not missed, ((out / "validation.md").read_text()
                        + "".join(_timeline(runs[name][1]) for name in missed))
    assert (out / "gantt-pbt.png").is_file()
    assert "SIMULATED (replay mode)" in (out / "comparison" / "comparison.md").read_text()
