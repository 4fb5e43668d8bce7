"""The task registry and the known-answer controls: torch-free tasks that every strategy runs in
seconds, the fast end-to-end tests of the strategies and of the verdicts. The positive control
must make PBT beat the grid in every seed and the comparison say so at α = 0.05; the negative
control must never let a verdict say better or worse."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_harness
from harness import tasks
from harness.config import ConfigError
from harness.contract.iteration import HParams
from harness.contract.rundir import RunDir
from harness.tasks import null_control, pbt_control
from harness.trial.checkpoint import META_FILE, Segment, restart_point

DEFAULT_SEEDS = "0 1 2 3 4 5"


def _segment(tmp_path: Path, task: str, lr: float, trial_id: str = "t1", **kw) -> Segment:
    cfg = tasks.resolve(task, env={}, overrides={"strategy": "manual"})
    return Segment(cfg=cfg, hparams=HParams(lr, 1, 0.0), model_path="", data_path="", trial_id=trial_id,
                   workdir=str(tmp_path), **kw)


def _train(seg: Segment, keep: Path | None = None) -> list:
    rows = []

    def report(done, ckpt):
        rows.append(done)
        if keep is not None:
            import shutil

            shutil.copytree(ckpt, keep / str(done.iteration))

    tasks.get(seg.cfg.task).load()(seg, report)
    return rows


@pytest.mark.unit
def test_the_registry_finds_every_task_file_and_a_task_name_is_a_preset(tmp_path):
    assert tasks.names()[:1] == ["squad"] and {"pbt_control", "null_control"} <= set(tasks.names())
    cfg = tasks.resolve("pbt_control", env={}, overrides={"strategy": "pbt"})
    assert (cfg.task, cfg.preset, cfg.train.iterations, cfg.budget.trial_iterations) == ("pbt_control", "pbt_control", 8, 96)
    assert cfg.search.bs_choices == (1,) and cfg.tune.metric == "eval_loss" and cfg.tune.mode == "min"
    # a preset file that names a task changes some of its defaults; the rest stay the task's
    preset = tmp_path / "mine.toml"
    preset.write_text('task = "pbt_control"\n[train]\niterations = 4\n')
    mine = tasks.resolve(str(preset), env={}, overrides={"strategy": "pbt"})
    assert (mine.task, mine.train.iterations, mine.search.lr_upper) == ("pbt_control", 4, 0.1)
    # the seed's task keeps the seed's defaults
    assert tasks.resolve("smoke", env={}, overrides={"strategy": "pbt"}).task == "squad"
    with pytest.raises(ConfigError, match="task='nope' is unknown; choose one of squad"):
        tasks.get("nope")


@pytest.mark.unit
def test_an_unknown_task_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--preset", "smoke", "--set", "task=nope",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: task='nope' is unknown")
    assert not list(tmp_path.iterdir())


@pytest.mark.unit
def test_a_fixed_learning_rate_stalls_on_the_positive_control_and_following_the_optimum_does_not(tmp_path):
    grid = tasks.resolve("pbt_control", env={}, overrides={"strategy": "manual"}).search.grid(12)
    best_fixed = min(_train(_segment(tmp_path, "pbt_control", g["lr"]))[-1].train_loss for g in grid)
    assert best_fixed > 1 - 0.9 * 2 * pbt_control.WINDOW  # no fixed rate gets past twice the window
    # a schedule that follows the optimum down (what PBT's exploits and perturbations find)
    state, lo, hi = {"progress": 0.0}, 0.01, 0.1
    seg = _segment(tmp_path, "pbt_control", 0.1)
    for _ in range(8):
        lr = lo * (hi / lo) ** (1 - min(state["progress"], 1.0))
        state, _, loss = pbt_control.step(state, lr, __import__("random").Random(0), seg)
    assert loss < best_fixed - 0.3


@pytest.mark.unit
def test_the_negative_control_ignores_the_hyperparameters(tmp_path):
    low = [r.eval_loss for r in _train(_segment(tmp_path, "null_control", 0.01))]
    high = [r.eval_loss for r in _train(_segment(tmp_path, "null_control", 0.1))]
    assert low == high and len(set(low)) == 8 and all(abs(v - 1) < 6 * null_control.NOISE for v in low)


@pytest.mark.unit
def test_a_control_restarts_from_its_checkpoint_like_a_model(tmp_path):
    keep = tmp_path / "kept"
    keep.mkdir()
    whole = _train(_segment(tmp_path, "pbt_control", 0.09), keep)
    assert json.loads((keep / "3" / META_FILE).read_text())["iteration"] == 3
    start = restart_point(keep / "3", tmp_path / "init", "t2")  # another trial exploits t1 at iteration 3
    rest = _train(_segment(tmp_path, "pbt_control", 0.09, trial_id="t2", **start))
    assert [r.iteration for r in rest] == [4, 5, 6, 7, 8] and rest[0].exploited_from == "t1"
    assert rest[0].started_from == "t1@3" and rest[1].started_from == "t2@4"
    # same state, same rate: the same progress as the trial that never stopped (noise aside)
    assert [r.train_loss for r in rest] == pytest.approx([r.train_loss for r in whole[3:]])


def test_the_controls_train_without_torch(tmp_path):
    """The whole driver path of a control (config, run folder, the manual strategy, record, tables)
    with torch and transformers unimportable."""
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'transformers'):\n"
               "            raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "from harness.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", blocker, "run", "--preset", "pbt_control", "--strategy", "manual",
                           "--no-mlflow", "--results-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "run_record.json").is_file()]
    record = RunDir(run_dir).record()
    assert len(record.trials) == 12 and record.iterations_run == 96


def _table(text: str, title: str) -> list[list[str]]:
    section = text.split(f"### {title}", 1)[1].split("\n\n", 2)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()[2:]]


@pytest.mark.integration
def test_the_positive_control_makes_the_comparison_say_pbt_is_better_at_the_default_seeds(tmp_path):
    """Six seeds of PBT and the grid on the positive control, in one driver and one Ray session,
    then `compare`: PBT's best is lower in every seed and the primary test says better, with p."""
    done = run_harness(tmp_path, "--preset", "pbt_control", "--strategies", "manual pbt", "--seeds", DEFAULT_SEEDS,
                       "--results-dir", str(tmp_path), "--no-mlflow", command="bench")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 runs (2 strategies x 6 seeds" in done.stdout
    out = tmp_path / "comparison"
    cmp_ = run_harness(tmp_path, "--latest", str(tmp_path), "--preset", "pbt_control", "--out", str(out),
                       command="compare")
    assert cmp_.returncode == 0, cmp_.stderr[-3000:]
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO((out / "comparison.csv").read_text()))}
    assert rows["pbt"]["ranks"] == "0:1 1:1 2:1 3:1 4:1 5:1" and rows["pbt"]["interval"] == "bootstrap"
    text = (out / "comparison.md").read_text()
    (loss,) = [r for r in _table(text, "Pairwise") if r[1] == "best eval_loss"]
    assert loss[0] == "pbt" and loss[3] == "manual" and loss[2].startswith("better (p = 0.0312 ≤ α = 0.05, 6 seeds)")
    assert math.isclose(float(loss[7]), 2 / 64, abs_tol=1e-4) and loss[4] == "primary"  # printed as 0.0312
    assert (out / "anytime_rank.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_every_strategy_runs_the_negative_control_and_no_verdict_is_drawn(tmp_path):
    """Every registered strategy on the negative control (one session, one seed each): each spends
    its budget, PBT and PB2 exploit, and the comparison decides nothing."""
    done = run_harness(tmp_path, "--preset", "null_control", "--seeds", "0", "--results-dir", str(tmp_path),
                       "--no-mlflow", command="bench")
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r.strategy: r for r in (RunDir(p.parent).record() for p in tmp_path.glob("*/run_record.json"))}
    assert set(records) == {"manual", "fifo", "asha", "pbt", "pb2"}
    for name, record in records.items():
        assert abs(record.iterations_run - 96) <= 9.6, (name, record.iterations_run)
    assert records["pbt"].exploits() and records["pb2"].exploits()
    out = tmp_path / "comparison"
    cmp_ = run_harness(tmp_path, "--latest", str(tmp_path), "--out", str(out), command="compare")
    assert cmp_.returncode == 0, cmp_.stderr[-3000:]
    verdicts = [r[2] for r in _table((out / "comparison.md").read_text(), "Pairwise") if r[1] == "best eval_loss"]
    assert len(verdicts) == 10 and all(v.startswith("not distinguishable with 1 seed") for v in verdicts)


@pytest.mark.unit
@pytest.mark.parametrize("args, message", [
    (["--strategies", "manual nope"], "error: strategy='nope' is unknown"),
    (["--seeds", "0 x"], "error: --seeds '0 x' is not a list of whole numbers"),
    (["--seed", "3"], "error: bench takes --strategies"),
])
def test_bench_refuses_bad_input_before_any_run(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "harness", "bench", "--preset", "pbt_control", "--results-dir",
                           str(tmp_path), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(message), done.stderr
    assert not list(tmp_path.iterdir())
