"""make bench-peer (tools/peer.py): transformers' own PBT path against the harness's. The unit tests
count on hand-made records what the report says (optimizer lrs that are not the trial's, exploits
that copy their donor, trials that barely trained, a best config that never trained) and check that
the peer takes every setting from the harness's configuration; one integration test runs both
sides for one seed at a third of the smoke budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recordkit import Run, row
from tools import peer

ROOT = Path(__file__).resolve().parent.parent
A, B = "e62d8_00000", "e62d8_00001"


def ckpt(trial: str, n: int) -> str:
    """A checkpoint path as Ray writes it for a trial of ``hyperparameter_search``."""
    return (f"/r/peer/_objective_{trial}_{int(trial[-5:])}_learning_rate=0.0001,per_device_train_batch_size=2,"
            f"weight_decay=0.0100_2026-12-02_21-32-39/checkpoint_{n:06d}")


def line(event: str, trial: str, *, lr: float, bs: int = 2, wd: float = 0.0, opt_lr: float | None = None,
         loss: float = 7.0, epoch: float = 1.0, step: int = 64, segment: str = "s", start_step: int = 0,
         resumed_from: str = "", at: float = 0.0, max_steps: int = 192) -> dict:
    """One line of the peer's callback log (128 samples: 64 steps per epoch at bs 2, 128 at bs 1)."""
    return {"event": event, "trial_id": trial, "at": at, "lr": lr, "bs": bs, "wd": wd,
            "optimizer_lr": lr if opt_lr is None else opt_lr, "optimizer_initial_lr": lr if opt_lr is None else opt_lr,
            "optimizer_weight_decay": wd, "eval_loss": loss, "epoch": epoch, "global_step": step,
            "max_steps": max_steps, "num_train_epochs": 3.0, "segment": segment, "start_step": start_step,
            "resumed_from": resumed_from, "torch_threads": 1}


def exploited_log() -> list[dict]:
    """A (lr 1e-4, bs 2) and B (lr 6e-6, bs 1) train an epoch; B is exploited from A and resumes A's
    checkpoint with its own new lr 8e-6: its optimizer keeps A's 1e-4. With B's batch size 2 it
    trains exactly what A trains (the same eval_loss); then A goes on alone and ends low, B's first
    segment alone would have barely trained."""
    return [
        line("segment", A, lr=1e-4, segment="a1"),
        line("segment", B, lr=6e-6, bs=1, segment="b1", max_steps=384),
        line("report", A, lr=1e-4, loss=7.0, epoch=1, step=64, segment="a1", at=1),
        line("report", B, lr=6e-6, bs=1, loss=7.5, epoch=1, step=128, segment="b1", at=2, max_steps=384),
        line("segment", B, lr=8e-6, opt_lr=1e-4, segment="b2", start_step=64, resumed_from=ckpt(A, 0)),
        line("report", B, lr=8e-6, opt_lr=1e-4, loss=6.25, epoch=2, step=128, segment="b2", start_step=64,
             resumed_from=ckpt(A, 0), at=3),
        line("segment", A, lr=1e-4, segment="a2", start_step=64, resumed_from=ckpt(A, 0)),
        line("report", A, lr=1e-4, loss=6.25, epoch=2, step=128, segment="a2", start_step=64,
             resumed_from=ckpt(A, 0), at=4),
        line("report", A, lr=1e-4, loss=5.0, epoch=3, step=192, segment="a2", start_step=64,
             resumed_from=ckpt(A, 0), at=5),
    ]


@pytest.mark.unit
def test_a_checkpoint_path_names_the_donor_and_an_own_checkpoint_none():
    assert peer.donor_of(ckpt(A, 2), B) == A
    assert peer.donor_of(ckpt(A, 2), A) == ""
    assert peer.donor_of("", A) == ""


@pytest.mark.unit
def test_the_peer_counts_the_donors_lr_the_copy_and_the_epochs_it_trained():
    lines = exploited_log()
    rows = peer.peer_rows(lines)
    assert [(peer.short(r.trial), r.donor) for r in rows] == [("c01", ""), ("c02", ""), ("c02", A), ("c01", ""),
                                                              ("c01", "")]
    side = peer.measure(peer.Side("peer defaults", 0), rows, peer.peer_initial_configs(lines))
    assert side.reports == 5 and side.exploited_reports == 1
    assert side.lr_mismatch == side.lr_mismatch_exploited == side.lr_from_donor == 1
    assert side.exact_copies == 1 and side.copies == ["c02 = c01 at epoch 2 (eval_loss 6.2500)"]
    assert side.epochs_trained == 5.0  # B's resumed segment: 64 steps at bs 2 = one epoch
    assert side.barely_trained == 0 and side.final_losses == {A: 5.0, B: 6.25}
    assert side.initial_lrs == [6e-6, 1e-4]
    assert (side.lrs_used, side.lrs_new) == (2, 0)  # the exploit brought no new lr: it restored A's


@pytest.mark.unit
def test_a_batch_size_change_on_resume_is_counted_as_the_part_of_an_epoch_it_trained():
    # B (bs 1: 128 steps an epoch) resumes A's bs-2 checkpoint at step 64: HF skips 64 batches of
    # its first epoch and reports "epoch 1" after training half of one
    lines = [line("report", B, lr=8e-6, bs=1, opt_lr=1e-4, epoch=1, step=128, segment="b2", start_step=64,
                  resumed_from=ckpt(A, 0), max_steps=384)]
    (r,) = peer.peer_rows(lines)
    assert r.trained_epochs == 0.5 and r.lr_differs and r.exploited


@pytest.mark.unit
def test_the_donors_lr_stays_when_the_exploited_trial_later_resumes_its_own_checkpoint():
    lines = exploited_log() + [
        line("report", B, lr=8e-6, opt_lr=1e-4, loss=5.5, epoch=3, step=192, segment="b3", start_step=128,
             resumed_from=ckpt(B, 1), at=6)]
    side = peer.measure(peer.Side("peer defaults", 0), peer.peer_rows(lines), {})
    assert side.lr_mismatch == side.lr_mismatch_exploited == 2 and side.exploited_reports == 1


@pytest.mark.unit
def test_a_peer_that_stops_moving_is_ended_and_says_what_ray_showed(tmp_path):
    stuck = "import time; print('Trial status: 2 PAUSED | 2 TERMINATED', flush=True); time.sleep(120)"
    done = peer.timed([sys.executable, "-c", stuck], tmp_path / "out.log", tmp_path, timeout=120,
                      progress=tmp_path / "reports.jsonl", stall_s=2)
    assert done.rc == -1 and done.wall_s < 60 and done.hung_at_s < 2
    assert done.error.startswith("hung: no report for 2 s") and "2 PAUSED | 2 TERMINATED" in done.error


def status(state: str, at: float) -> str:
    """One of Ray Tune's trial-status prints, its clock in local time as Ray writes it."""
    return (f"Trial status: {state}\nCurrent time: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}. "
            "Total running time: 1min 0s\nLogical resource usage: 0/2 CPUs, 0/0 GPUs\n")


@pytest.mark.unit
def test_a_deadlock_is_two_status_prints_after_the_last_report_with_trials_paused_and_none_running():
    last = time.time() - 100
    stuck = "2 TERMINATED | 2 PAUSED"
    assert peer.deadlocked(status(stuck, last + 30) + status(stuck, last + 60), last) == stuck
    assert peer.deadlocked(status(stuck, last + 60), last) == ""  # one print may be a moment between decisions
    # a print from before the last report says nothing of now
    assert peer.deadlocked(status(stuck, last - 5) + status(stuck, last + 30), last) == ""
    for moving in ("2 TERMINATED | 1 RUNNING | 1 PAUSED", "2 TERMINATED | 1 PENDING | 1 PAUSED", "4 TERMINATED"):
        assert peer.deadlocked(status(stuck, last + 30) + status(moving, last + 60), last) == "", moving


@pytest.mark.unit
def test_a_deadlocked_peer_is_ended_at_its_second_status_print_not_after_the_stall_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "RAY_STATUS_EVERY_S", 1.0)  # Ray prints every 30 s; the test's process every second
    child = ("import time\nfor k in (1, 2, 3):\n"
             "    at = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(time.time() + k))\n"
             "    print(f'Trial status: 2 TERMINATED | 2 PAUSED\\nCurrent time: {at}. Total running time: 9s', flush=True)\n"
             "time.sleep(120)\n")
    done = peer.timed([sys.executable, "-c", child], tmp_path / "out.log", tmp_path, timeout=120,
                      progress=tmp_path / "reports.jsonl")
    assert done.rc == -1 and done.wall_s < 60 and done.hung_at_s < 1, done
    assert done.error.startswith("hung: deadlocked after the last report") and "2 TERMINATED | 2 PAUSED" in done.error


@pytest.mark.unit
def test_a_peer_that_hung_after_training_out_is_measured_exit_0_one_that_hung_before_exit_1(tmp_path, capsys):
    mine = tmp_path / "seed-0" / "peer-defaults"
    mine.mkdir(parents=True)
    hung = {"rc": -1, "wall_s": 130.0, "error": "hung: deadlocked", "hung_at_s": 70.0}
    (mine / peer.OUTCOME).write_text(json.dumps(hung))
    (mine / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exploited_log()))
    assert peer.main(["--seeds", "0", "--variants", "defaults", "--out", str(tmp_path), "--rebuild"]) == 1
    ended = line("segment", B, lr=8e-6, segment="b3", start_step=384, resumed_from=ckpt(A, 2), max_steps=192)
    (mine / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exploited_log() + [ended]))
    assert peer.main(["--seeds", "0", "--variants", "defaults", "--out", str(tmp_path), "--rebuild"]) == 0
    assert "HUNG peer defaults seed 0: hung: deadlocked" in capsys.readouterr().out


@pytest.mark.unit
def test_a_hung_run_counts_for_the_loss_only_once_every_trial_trained_its_last_epoch(tmp_path):
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exploited_log()))
    hung = peer.partial(peer.Side("peer defaults", 0, wall_s=400.0, hung=True, hung_at_s=300.0), tmp_path)
    assert not hung.trained_out  # B's last report is its epoch 2
    assert hung.best_trial == A and hung.best_eval_loss == 5.0
    # B resumes a bs-1 donor's step 384 with bs 2 (192 steps in all): HF trains nothing, the trial ends
    ended = line("segment", B, lr=8e-6, segment="b3", start_step=384, resumed_from=ckpt(A, 2), max_steps=192)
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exploited_log() + [ended]))
    hung = peer.partial(peer.Side("peer defaults", 0, wall_s=400.0, hung=True, hung_at_s=300.0), tmp_path)
    assert hung.trained_out and hung.idle_segments == 1
    assert peer.counts(hung, "best_eval_loss") and not peer.counts(hung, "wall_s")


@pytest.mark.unit
def test_a_trial_that_ends_above_the_threshold_barely_trained():
    lines = [line("report", A, lr=6e-6, loss=7.52, at=1), line("report", B, lr=1e-4, loss=3.0, at=1)]
    side = peer.measure(peer.Side("peer defaults", 0), peer.peer_rows(lines), {})
    assert side.barely_trained == 1 and side.trials == 2


@pytest.mark.unit
def test_the_best_config_ray_names_may_never_have_trained():
    rows = peer.peer_rows(exploited_log())
    # after the last exploit B's config says 8e-6, but every report of B trained at 6e-6 or 1e-4
    assert not peer.trained_with(B, {"learning_rate": 8e-6, "per_device_train_batch_size": 2, "weight_decay": 0.0}, rows)
    assert peer.trained_with(A, {"learning_rate": 1e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0}, rows)


def harness_record():
    """The harness's version of the same story: B's exploit restores A's weights only, so B trains
    with its own lr (optimizer_lr == lr) and not A's copy."""
    run = Run("pbt")
    run.trial("t_00000", [row(1, 10, 5, 7.0, lr=1e-4, optimizer_lr=1e-4, optimizer_weight_decay=0.0),
                          row(2, 20, 5, 6.25, lr=1e-4, optimizer_lr=1e-4, optimizer_weight_decay=0.0),
                          row(3, 30, 5, 5.0, lr=1e-4, optimizer_lr=1e-4, optimizer_weight_decay=0.0)])
    run.trial("t_00001", [row(1, 11, 5, 7.5, lr=6e-6, bs=1, optimizer_lr=6e-6, optimizer_weight_decay=0.0),
                          row(2, 21, 5, 6.1, lr=8e-6, donor="t_00000", start_it=1, optimizer_lr=8e-6,
                              optimizer_weight_decay=0.0),
                          row(3, 31, 5, 5.5, lr=8e-6, start_it=1, optimizer_lr=8e-6, optimizer_weight_decay=0.0)])
    return run.record(wall=40)


@pytest.mark.unit
def test_the_harness_rows_keep_the_donor_for_the_whole_segment_and_count_by_the_same_rule():
    rows = peer.harness_rows(harness_record())
    assert [(r.trial, r.donor) for r in rows if r.trial == "t_00001"] == [
        ("t_00001", ""), ("t_00001", "t_00000"), ("t_00001", "t_00000")]
    side = peer.measure(peer.Side("harness", 0), rows, {"t_00000": {"lr": 1e-4, "bs": 2, "wd": 0.0},
                                                         "t_00001": {"lr": 6e-6, "bs": 1, "wd": 0.0}})
    assert side.reports == 6 and side.exploited_reports == 2 and side.epochs_trained == 6.0
    assert side.lr_mismatch == side.exact_copies == side.barely_trained == 0
    assert (side.lrs_used, side.lrs_new, side.distinct_final) == (3, 1, 2)  # B trained on at its new 8e-6


@pytest.mark.unit
def test_the_report_shows_both_sides_the_counts_and_why_three_seeds_cannot_decide():
    settings = peer.Settings.of(peer.load_config(0))
    sides = []
    for seed, (h_loss, p_loss) in enumerate([(2.9, 5.1), (3.0, 4.4), (2.8, 4.9)]):
        h = peer.measure(peer.Side("harness", seed, wall_s=70.0, ok=True, best_eval_loss=h_loss, best_trial="t_00000",
                                   best_config={"lr": 1e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0},
                                   best_config_trained=True), peer.harness_rows(harness_record()), {})
        p = peer.measure(peer.Side("peer defaults", seed, wall_s=320.0, ok=True, best_eval_loss=p_loss, best_trial=B,
                                   best_config={"learning_rate": 8e-6, "per_device_train_batch_size": 2,
                                                "weight_decay": 0.0}, best_config_trained=False),
                         peer.peer_rows(exploited_log()), peer.peer_initial_configs(exploited_log()))
        sides += [h, p]
    text, data = peer.build_report(settings, sides, ["defaults", "reuse_actors"])
    assert "### peer: defaults" in text and "### peer: reuse_actors" not in text  # no run of it: no table
    assert "| 0 | 70 | 320 | 4.57 | 2.900 | 5.100 | 0 of 6 | 1 of 5 | 0 of 2 | 1 of 1 | 0 of 2 | 0 of 2 |" in text
    assert "| median | 70 | 320 | 4.57 | 2.900 | 4.900 |" in text
    assert "cannot give p below 0.25 > α = 0.05" in text and "smallest p is 2/2^3 = 0.25" in text
    assert "names c02 best: lr 8e-06, bs 2, wd 0.0, which it never trained with" in text
    assert data["tests"]["defaults"]["best_eval_loss"]["p"] == pytest.approx(0.25)
    assert data["tests"]["defaults"]["median_wall_ratio"] == pytest.approx(320 / 70)
    json.dumps(data)  # peer.json


@pytest.mark.unit
def test_rebuild_reads_the_runs_in_out_and_writes_the_report_again(tmp_path, capsys):
    seed = tmp_path / "seed-0"
    run = seed / "harness" / "results" / "pbt-smoke-1"
    run.mkdir(parents=True)
    harness_record().save(run / "run_record.json")
    (run / "harness.log").write_text("... INFO harness.driver.runner: model: /c/m; tokenized data: /c/d.pt\n")
    (seed / "harness" / peer.OUTCOME).write_text(json.dumps({"rc": 0, "wall_s": 70.0}))
    mine = seed / "peer-defaults"
    mine.mkdir()
    (mine / "reports.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exploited_log()))
    (mine / "inputs.json").write_text(json.dumps({"model_path": "/c/m", "data_path": "/c/d.pt"}))
    (mine / "peer_run.json").write_text(json.dumps({
        "best": {"trial_id": A, "objective": 5.0, "hyperparameters": {"learning_rate": 1e-4,
                                                                      "per_device_train_batch_size": 2,
                                                                      "weight_decay": 0.0}},
        "trials": [{"trial_id": A, "training_iteration": 3}, {"trial_id": B, "training_iteration": 3}]}))
    (mine / peer.OUTCOME).write_text(json.dumps({"rc": 0, "wall_s": 210.0}))
    assert peer.main(["--seeds", "0", "--variants", "defaults", "--out", str(tmp_path), "--rebuild"]) == 0
    text = capsys.readouterr().out
    assert "| 0 | 40 | 210 |" not in text and "| 0 | 70 | 210 | 3.00 | 5.000 | 5.000 | 0 of 6 | 1 of 5 |" in text
    assert "every side read the model /c/m and the tokenized data /c/d.pt" in text
    assert "peer defaults names c01 best: lr 0.0001, bs 2, wd 0.0, which it trained with;" in text
    assert (tmp_path / "peer.md").read_text() == text.rstrip("\n") + "\n"
    assert json.loads((tmp_path / "peer.json").read_text())["sides"][1]["ray_iterations"] == 6


@pytest.mark.unit
def test_the_peer_takes_population_slots_cpus_and_pbt_settings_from_the_harness(monkeypatch, tmp_path):
    from ray.tune.schedulers import pbt as ray_pbt

    from harness.contract.rundir import RunDir
    from harness.strategies import StrategyContext
    from harness.strategies import pbt as harness_pbt

    monkeypatch.setattr(ray_pbt, "random", ray_pbt.random)  # the harness's scheduler replaces it: put it back
    cfg = peer.load_config(0)
    s = peer.Settings.of(cfg)
    assert (s.population, s.slots, s.cpus_per_trial, s.iterations) == (12, 4, 0.5, 3)  # the smoke preset's
    theirs = harness_pbt.scheduler(StrategyContext(cfg=cfg, run_dir=RunDir(tmp_path), model_path="", data_path=""))
    ours = peer.pbt_scheduler(s)
    for attr in ("_time_attr", "_perturbation_interval", "_quantile_fraction", "_resample_probability", "_synch"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert sorted(ours._hyperparam_mutations) == sorted(
        "learning_rate" if k == "lr" else k for k in theirs._hyperparam_mutations)
    space, harness_space = peer.hp_space(s), cfg.search.ray_space()
    assert (space["learning_rate"].lower, space["learning_rate"].upper) == (harness_space["lr"].lower,
                                                                            harness_space["lr"].upper)
    for key in ("per_device_train_batch_size", "weight_decay"):
        assert space[key].categories == harness_space[key].categories


@pytest.mark.unit
@pytest.mark.parametrize("argv, says", [
    (["--seeds", "x"], "--seeds 'x' is not a seed; give whole numbers >= 0"),
    (["--seeds", "1", "1"], "repeats a seed"),
    (["--variants", "fast"], "--variants fast: not a peer variant; choose from defaults reuse_actors"),
    (["--set", "train.lr_scheduler=linear"], "train.lr_scheduler='linear'"),
    (["--set", "budget.slots=-1"], "budget.slots"),
    (["--set", "seed=3"], "set seeds with --seeds"),
])
def test_bad_input_is_one_line_naming_it_and_the_fix_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        peer.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.unit
def test_help_names_the_flags():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "peer.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0
    for flag in ("--seeds", "--variants", "--out", "--cache", "--set"):
        assert flag in done.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_one_seed_runs_both_sides_and_the_peer_trains_its_donors_lr(tmp_path, cache_dir):
    """A third of the smoke budget (a population of 4 on 2 slots), the faster peer variant, one
    batch size: with one batch size every exploit trains exactly its donor's lr, weight decay and
    data, so the copies are certain. The peer's synchronous PBT can still deadlock once its trials
    have trained out (seen in CI: "2 TERMINATED | 2 PAUSED" after two segments resumed at their last
    epoch); the tool ends it at Ray's second status print and counts its losses, so either ending
    is a measured run."""
    out = tmp_path / "peer"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "peer.py"), "--seeds", "0", "--variants",
                           "reuse_actors", "--out", str(out), "--cache", str(cache_dir),
                           "--set", "budget.trial_iterations=12", "--set", "budget.slots=2",
                           "--set", "search.bs_choices=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "### peer: reuse_actors" in done.stdout and (out / "peer.md").read_text() in done.stdout
    data = json.loads((out / "peer.json").read_text())
    harness, reuse = (next(s for s in data["sides"] if s["side"] == name) for name in ("harness", "peer reuse_actors"))
    assert harness["ok"] and harness["trials"] == reuse["trials"] == 4
    assert reuse["ok"] or reuse["hung"] and reuse["trained_out"] and "deadlocked" in reuse["error"], reuse["error"]
    assert harness["model_path"] == reuse["model_path"] and harness["data_path"] == reuse["data_path"]
    assert harness["initial_lrs"] == reuse["initial_lrs"]  # one sampler, one seed: the same population
    assert harness["lr_mismatch"] == harness["exact_copies"] == 0
    assert reuse["lr_mismatch"] >= 1 and reuse["exact_copies"] >= 1 and reuse["lrs_new"] == 0
    assert f"| 0 of {harness['reports']} | {reuse['lr_mismatch']} of {reuse['reports']} |" in done.stdout


@pytest.mark.unit
def test_an_optimizer_lr_the_record_lacks_is_unknown_not_a_mismatch():
    run = Run("pbt")
    run.trial("t_00000", [row(1, 10, 5, 7.0, lr=1e-4)])  # an older record: no optimizer figures
    (missing,) = peer.harness_rows(run.record(wall=20))
    assert not missing.lr_differs and peer.math.isnan(missing.optimizer_lr) and peer.math.isnan(missing.optimizer_wd)
    side = peer.measure(peer.Side("harness", 0), [missing], {})
    assert side.lr_mismatch == 0
    # an unknown weight decay never matches a config with wd 0.0
    assert not peer.trained_with("t_00000", {"lr": 1e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0},
                                 [missing])


@pytest.mark.unit
def test_a_seed_whose_cache_cannot_be_made_is_a_failed_seed_in_the_report(tmp_path, monkeypatch, capsys):
    def no_cache(seed, cache, sets, log):
        raise peer.CacheMissing(f"harness prepare --seed {seed} failed: no network (see {log})")

    monkeypatch.setattr(peer, "ensure_cache", no_cache)
    assert peer.main(["--seeds", "5", "--variants", "defaults", "--out", str(tmp_path / "o"),
                      "--cache", str(tmp_path / "c")]) == 1
    text = (tmp_path / "o" / "peer.md").read_text()
    assert "FAILED peer defaults seed 5: harness prepare --seed 5 failed: no network" in text
    assert "FAILED harness seed 5: harness prepare --seed 5 failed" in text


@pytest.mark.unit
def test_rebuild_describes_the_settings_the_runs_were_made_with(tmp_path, capsys):
    settings = peer.Settings.of(peer.load_config(0))
    stored = {**peer.asdict(settings), "population": 8, "slots": 2}
    (tmp_path / "peer.json").write_text(json.dumps({"settings": stored}))
    peer.main(["--seeds", "0", "--variants", "defaults", "--out", str(tmp_path), "--rebuild"])
    assert "PBT population 8, 2 trials at once" in (tmp_path / "peer.md").read_text()


@pytest.mark.unit
def test_the_data_behind_a_report_follows_its_checkpoints_back_through_the_donor():
    assert peer.data_behind(exploited_log()) == {A: 3.0, B: 2.0}
    # B (bs 1: 128 steps an epoch) resumes A's bs-2 checkpoint at step 64 (one epoch of data) and
    # HF trains it on to step 384: 2.5 epochs more, 3.5 epochs of data behind its last report
    lines = exploited_log()[:3] + [
        line("segment", B, lr=8e-6, bs=1, opt_lr=1e-4, segment="b2", start_step=64, resumed_from=ckpt(A, 0),
             max_steps=384),
        *[line("report", B, lr=8e-6, bs=1, opt_lr=1e-4, epoch=e, step=128 * e, segment="b2", start_step=64,
               resumed_from=ckpt(A, 0), max_steps=384, at=10 + e) for e in (1, 2, 3)]]
    assert peer.data_behind(lines)[B] == 3.5


@pytest.mark.unit
def test_a_trial_continued_untouched_is_compared_epoch_by_epoch_with_the_same_config_on_the_other_side():
    lines = exploited_log()
    p = peer.measure(peer.Side("peer defaults", 0), peer.peer_rows(lines), peer.peer_initial_configs(lines))
    a, b = peer.config_key({"lr": 1e-4, "bs": 2, "wd": 0.0}), peer.config_key({"lr": 6e-6, "bs": 1, "wd": 0.0})
    assert p.untouched == {a: [7.0, 6.25, 5.0], b: [7.5]}  # B stops at its exploit
    run = Run("pbt")
    run.trial("t_00000", [row(1, 10, 5, 7.0, lr=1e-4, optimizer_lr=1e-4), row(2, 20, 5, 6.5, lr=1e-4, optimizer_lr=1e-4),
                          row(3, 30, 5, 6.0, lr=1e-4, optimizer_lr=1e-4)])
    run.trial("t_00001", [row(1, 11, 5, 7.5, lr=6e-6, bs=1, optimizer_lr=6e-6),
                          row(2, 21, 5, 7.4, lr=6e-6, bs=1, optimizer_lr=6e-6)])
    h = peer.measure(peer.Side("harness", 0), peer.harness_rows(run.record(wall=40)),
                     {"t_00000": {"lr": 1e-4, "bs": 2, "wd": 0.0}, "t_00001": {"lr": 6e-6, "bs": 1, "wd": 0.0}})
    by_epoch = peer.continuations(h, p)
    assert by_epoch == {1: [0.0, 0.0], 2: [-0.25], 3: [-1.0]}
    assert peer.continuation_text(by_epoch) == ("at epoch 1 equal in 2 of 2; at epoch 2 lower on the peer in 1 of 1 "
                                                "(median peer − harness -0.250); at epoch 3 lower on the peer in 1 of 1 "
                                                "(median peer − harness -1.000)")


@pytest.mark.unit
def test_continuation_refuses_a_learning_rate_that_is_not_one(capsys):
    from tools import continuation

    with pytest.raises(SystemExit) as exit_:
        continuation.main(["--lr", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--lr 0.0 is not a learning rate" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_the_moments_are_what_a_fresh_trainer_loses_when_it_continues_a_trial(cache_dir):
    """tools/continuation.py's finding, on one seed: a fresh Trainer with the first one's AdamW state
    (and the trial's own lr) continues exactly as one Trainer does; without it (the harness) it
    ends its second epoch higher, whichever the shuffle."""
    from tools import continuation

    got = continuation.continue_four_ways(0, 1.2e-4, 1, cache_dir)
    one, harness, kept, same_seed = (got[w] for w in continuation.WAYS)
    assert kept == pytest.approx(one, abs=1e-6)
    assert harness > one + 0.1 and same_seed > one + 0.1
