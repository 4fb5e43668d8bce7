"""The trial without Ray: the same run_segment Tune drives, with a reporter that collects."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from harness.contract.iteration import IterationReport
from harness.trial.data import prepare
from harness.contract.iteration import HParams
from harness.trial.deepspeed import zero_config as deepspeed_config
from harness.trial.ranks import run_distributed, run_trial_segment
from harness.trial.checkpoint import META_FILE, MODEL_DIR, Segment, TrialError
from harness.trial.segment import run_segment


@pytest.fixture(scope="module")
def data_path(smoke_cfg, tiny_tokenizer, cache_dir) -> str:
    return str(prepare(smoke_cfg.data, tiny_tokenizer, seed=smoke_cfg.seed,
                       max_length=smoke_cfg.model.max_length, cache_dir=cache_dir))


class Collector:
    def __init__(self, keep: Path):
        self.keep = keep
        self.reports: list[IterationReport] = []

    def __call__(self, report: IterationReport, ckpt_dir: str) -> None:
        assert json.loads((Path(ckpt_dir) / META_FILE).read_text())["iteration"] == report.iteration
        shutil.copytree(ckpt_dir, self.keep / f"iter{report.iteration}")
        self.reports.append(report)


def _segment(smoke_cfg, tiny_model_path, data_path, tmp_path, **kw) -> Segment:
    hparams = HParams(**kw.pop("hparams", {"lr": 2e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0}))
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return Segment(cfg=smoke_cfg, hparams=hparams, model_path=tiny_model_path,
                   data_path=data_path, trial_id="t0", workdir=str(workdir), **kw)


def test_eval_loss_falls_with_a_good_lr_and_barely_moves_with_a_bad_one(smoke_cfg, tiny_model_path, data_path, tmp_path):
    losses = {}
    for lr in (smoke_cfg.search.lr_upper, smoke_cfg.search.lr_lower):
        got = Collector(tmp_path / f"keep{lr}")
        seg = _segment(smoke_cfg, tiny_model_path, data_path, tmp_path,
                       hparams={"lr": lr, "per_device_train_batch_size": 2, "weight_decay": 0.0})
        run_trial_segment(seg, got)  # what Tune calls: run_segment in this process, measured (sysmon)
        assert [r.iteration for r in got.reports] == [1, 2, 3]
        losses[lr] = [r.eval_loss for r in got.reports]
        for r in got.reports:  # the trial's own use of the machine, on the CPU
            assert r.cpu_percent > 0 and r.cpus_reserved == smoke_cfg.resources.cpus_per_worker and r.rss_peak_mib > 0
            assert (r.gpus, r.gpu_util_percent, r.gpu_memory_peak_mib) == (0, None, None)
            assert 0 < r.monitor_s < 0.05 * (sum(r.phases.values()) + 0.5), r  # a small cost of its iteration
    good, bad = losses[smoke_cfg.search.lr_upper], losses[smoke_cfg.search.lr_lower]
    assert good[0] - good[-1] > 1.0, good  # falls visibly, iteration after iteration
    assert abs(bad[0] - bad[-1]) < 0.1, bad  # barely moves
    assert good[-1] < bad[-1] - 2.0


def test_restore_trains_with_the_new_hyperparameters_for_exactly_the_remaining_iterations(
    smoke_cfg, tiny_model_path, data_path, tmp_path
):
    """The PBT resume trap: the donor's lr/scheduler must not survive an exploit."""
    donor = Collector(tmp_path / "donor")
    seg = _segment(smoke_cfg, tiny_model_path, data_path, tmp_path,
                   hparams={"lr": 1.9e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0})
    run_segment(dataclasses.replace(seg, cfg=seg.cfg.updated({"train.iterations": 1})), donor)
    ckpt = tmp_path / "donor" / "iter1"
    assert (ckpt / MODEL_DIR / "config.json").is_file()

    clone = Collector(tmp_path / "clone")
    new = HParams(lr=7.6e-6, per_device_train_batch_size=1, weight_decay=0.01)
    run_segment(dataclasses.replace(seg, hparams=new, trial_id="t1", start_iteration=1, exploited_from="t0",
                                    init_weights=str(ckpt / MODEL_DIR), epochs_before=1.0), clone)
    assert [r.iteration for r in clone.reports] == [2, 3]  # exactly the remaining ones
    for r in clone.reports:
        assert r.optimizer_lr == pytest.approx(7.6e-6, rel=1e-9)
        assert r.optimizer_weight_decay == 0.01 and r.per_device_train_batch_size == 1
    assert [r.epoch for r in clone.reports] == [2.0, 3.0]  # batch-size change keeps epoch accounting
    assert [r.exploited_from for r in clone.reports] == ["t0", ""]
    # the clone started from the donor's weights, not from scratch
    assert clone.reports[0].eval_loss < donor.reports[0].eval_loss + 0.05


def test_two_gloo_ranks_train_one_trial(smoke_cfg, tiny_model_path, data_path, tmp_path):
    got = Collector(tmp_path / "dist")
    seg = _segment(smoke_cfg, tiny_model_path, data_path, tmp_path)
    seg = dataclasses.replace(seg, cfg=seg.cfg.updated({"train.iterations": 2, "resources.workers_per_trial": 2}))
    run_trial_segment(seg, got)  # run_distributed, measured in this (idle) process
    assert [r.iteration for r in got.reports] == [1, 2]
    assert all(r.world_size == 2 and r.effective_batch_size == 4 for r in got.reports)
    # the ranks are this process's children: their CPU counts (this process alone only polls a pipe)
    assert all(r.cpu_percent > 30 and r.cpus_reserved == 2 * smoke_cfg.resources.cpus_per_worker for r in got.reports)
    assert got.reports[-1].eval_loss < got.reports[0].eval_loss


def test_a_failing_rank_fails_the_trial_with_its_exit_code(smoke_cfg, tiny_model_path, tmp_path):
    seg = _segment(smoke_cfg, tiny_model_path, str(tmp_path / "missing.pt"), tmp_path)
    with pytest.raises(TrialError, match=r"rank\d exited with code 1"):
        run_distributed(seg, 2, Collector(tmp_path / "never"))


def test_deepspeed_config_leaves_batch_lr_and_precision_to_the_trainer():
    ds = deepspeed_config(2)
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_allow_untested_optimizer"] is True
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert ds["fp16"] == {"enabled": "auto"} and ds["bf16"] == {"enabled": "auto"}
    assert "optimizer" not in ds and ds["zero_optimization"]["offload_optimizer"] == {"device": "none"}
    assert deepspeed_config(3)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_on_the_cpu_accelerator(stage, smoke_cfg, tiny_model_path, data_path, tmp_path,
                                                      torch_extensions):
    """The seed preset's DeepSpeed path, at smoke scale on DeepSpeed's CPU accelerator over gloo."""
    got = Collector(tmp_path / "ds")
    seg = _segment(smoke_cfg, tiny_model_path, data_path, tmp_path, cache_dir=str(tmp_path / "cache"))
    cfg = seg.cfg.updated({"train.iterations": 2, "train.deepspeed": True, "train.deepspeed_stage": stage})
    run_trial_segment(dataclasses.replace(seg, cfg=cfg), got)
    assert [r.iteration for r in got.reports] == [1, 2]
    assert all(r.deepspeed for r in got.reports)
    assert got.reports[-1].eval_loss < got.reports[0].eval_loss
    assert got.reports[0].optimizer_lr == pytest.approx(2e-4)
    # the checkpoint holds full weights that load without DeepSpeed (ZeRO-3 gathers them on save)
    from harness.trial.model import load_model

    assert load_model(str(tmp_path / "ds" / "iter2" / MODEL_DIR)).num_parameters() > 0
