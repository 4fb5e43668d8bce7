"""The trial's own use of the machine (harness.trial.sysmon), and what the comparison makes of it:
a real busy child process for the CPU, a fake NVML for the GPUs, hand-made records for the tables."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from recordkit import Run, row

from harness.contract.iteration import Iteration, IterationReport
from harness.reporting import quiz
from harness.reporting.analysis import device_utilization, summarize
from harness.reporting.report import comparison_csv, comparison_table
from harness.reporting.seeds import aggregate
from harness.trial.sysmon import Monitor, assigned_gpus, descendants, nvml_handles, visible_devices

pytestmark = pytest.mark.unit

#: A child that burns exactly ``sys.argv[1]`` CPU-seconds, says so, then lives on idle for a while.
BURN = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]): pass\n"
        "print('done', flush=True)\ntime.sleep(float(sys.argv[2]))\n")


def _burn(cpu_s: float, linger_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BURN, str(cpu_s), str(linger_s)], stdout=subprocess.PIPE, text=True)


def _cpu_seconds(monitor: Monitor, started: float) -> tuple[float, object]:
    """CPU-seconds of the iteration from its percent (an upper bound: this wall began before the monitor's)."""
    usage = monitor.take()
    return usage.cpu_percent / 100 * (time.monotonic() - started), usage


def test_a_busy_child_counts_while_it_runs_and_after_it_was_reaped():
    started = time.monotonic()
    with Monitor(cpus_reserved=1, gpus_reserved=0, env={}) as monitor:
        alive = _burn(1.0, linger_s=30)
        assert alive.stdout.readline() == "done\n"  # burnt 1 s and still running: a live descendant
        cpu_s, usage = _cpu_seconds(monitor, started)
        # the child's second, its start-up, the sampler's own; as a percent, about 100 of one core
        # on an idle machine, less when other work shares the cores (the second takes longer)
        assert 1.0 <= cpu_s < 2.0, usage
        assert usage.rss_peak_mib > 5  # the child's + ours
        assert (usage.gpus, usage.gpu_util_percent, usage.gpu_memory_peak_mib) == (0, None, None)
        assert usage.cpus_reserved == 1.0 and 0 < usage.monitor_s < cpu_s

        started = time.monotonic()
        alive.kill()
        alive.wait()  # reaped: its second moves into our children_user, and is not counted again
        time.sleep(0.3)
        cpu_s, usage = _cpu_seconds(monitor, started)
        assert cpu_s < 0.2, usage

        started = time.monotonic()
        # a grandchild reaped by a child reaped by us: both gone by the time we look
        parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}, '0.6', '0'], check=True)"
        subprocess.run([sys.executable, "-c", parent], check=True, capture_output=True)
        cpu_s, usage = _cpu_seconds(monitor, started)
        assert 0.6 <= cpu_s < 1.6, usage



def test_a_child_the_process_had_before_the_trial_is_not_the_trials():
    # the manual grid trains in the driver's process, whose watchdog child runs beside it
    there_before = _burn(30.0)
    try:
        time.sleep(0.2)
        started = time.monotonic()
        with Monitor(cpus_reserved=1, gpus_reserved=0, env={}) as monitor:
            time.sleep(1.0)  # the other child burns a core all along
            cpu_s, usage = _cpu_seconds(monitor, started)
            assert cpu_s < 0.3, usage
            started = time.monotonic()
            mine = _burn(0.5)
            assert mine.stdout.readline() == "done\n"
            cpu_s, usage = _cpu_seconds(monitor, started)
            assert 0.5 <= cpu_s < 1.0, usage
            mine.wait()
    finally:
        there_before.kill()
        there_before.wait()


def test_descendants_are_the_whole_tree_below_a_process(monkeypatch):
    import psutil

    from harness.trial import sysmon

    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                              "print(g.pid, flush=True)\ntime.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        assert {child.pid, grandchild} <= set(descendants(os.getpid()))
        assert sorted(descendants(child.pid)) == [grandchild]
        assert not {child.pid, grandchild} & set(descendants(os.getpid(), frozenset({child.pid})))  # and its own
        monkeypatch.setattr(sysmon.os.path, "exists", lambda path: False)  # no /proc children lists: psutil's scan
        assert sorted(descendants(child.pid)) == [grandchild]
        assert not {child.pid, grandchild} & set(descendants(os.getpid(), frozenset({child.pid})))
    finally:
        for pid in (child.pid, grandchild):
            psutil.Process(pid).kill()
        child.wait()


def test_stamp_fills_the_report_fields_and_keeps_the_rest():
    with Monitor(cpus_reserved=2, gpus_reserved=0, env={"CUDA_VISIBLE_DEVICES": "0"}) as monitor:
        done = monitor.stamp(IterationReport(iteration=3, eval_loss=1.5, phases={"train": 1.0}))
    assert (done.iteration, done.eval_loss, done.phases) == (3, 1.5, {"train": 1.0})
    assert done.cpus_reserved == 2.0 and done.cpu_percent is not None and done.rss_peak_mib > 0
    assert (done.gpus, done.gpu_util_percent, done.gpu_memory_peak_mib) == (0, None, None)  # reserved none: none


# --------------------------------------------------------------------------- GPUs, with a fake NVML

class FakeNvml:
    """Four GPUs (index i: utilization 10(i+1) %, (i+1) GiB used) and one MIG instance with no
    utilization of its own; remembers which devices were read."""

    class NVMLError(Exception):
        pass

    UUIDS = ["GPU-0aaa-1111", "GPU-1bbb-2222", "GPU-2ccc-3333", "GPU-3ddd-4444"]
    MIG = "MIG-9e9e-5555"

    def __init__(self, *, broken: bool = False):
        self.broken, self.read, self.up = broken, set(), 0

    def nvmlInit(self) -> None:
        if self.broken:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.up += 1

    def nvmlShutdown(self) -> None:
        self.up -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.UUIDS)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.UUIDS):
            raise self.NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        if uuid == self.MIG:
            return 9
        if uuid not in self.UUIDS:
            raise self.NVMLError("Not Found")
        return self.UUIDS.index(uuid)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.MIG if handle == 9 else self.UUIDS[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self.read.add(handle)
        if handle == 9:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=10 * (handle + 1), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self.read.add(handle)
        return SimpleNamespace(used=(handle % 8 + 1) * 2**30, total=80 * 2**30)


@pytest.mark.parametrize("value, ids", [
    (None, None), ("", []), ("1,3", ["1", "3"]), (" 2 ", ["2"]), ("0,-1,2", ["0"]), ("-1", []),
    ("GPU-1bbb-2222,MIG-9e9e-5555", ["GPU-1bbb-2222", "MIG-9e9e-5555"]),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, ids):
    assert visible_devices({} if value is None else {"CUDA_VISIBLE_DEVICES": value}) == ids


def test_the_reservation_decides_whether_there_are_gpus_the_variable_which():
    assert assigned_gpus(0, {"CUDA_VISIBLE_DEVICES": "0,1"}) == []  # Ray leaves it alone for 0 GPUs
    assert assigned_gpus(1, {"CUDA_VISIBLE_DEVICES": "2"}) == ["2"]
    assert assigned_gpus(2, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert assigned_gpus(2, {}) == ["0", "1"] and assigned_gpus(0.5, {}) == ["0"]  # outside Ray: the first ones


def test_indices_and_uuids_and_uuid_prefixes_become_the_right_handles():
    nvml = FakeNvml()
    assert nvml_handles(nvml, ["3", "1"]) == [3, 1]
    assert nvml_handles(nvml, ["GPU-2ccc-3333", "MIG-9e9e-5555", "GPU-0aaa"]) == [2, 9, 0]
    with pytest.raises(FakeNvml.NVMLError):
        nvml_handles(nvml, ["GPU-ffff"])


def _usage(env: dict[str, str], gpus_reserved: float, nvml: FakeNvml):
    with Monitor(cpus_reserved=1, gpus_reserved=gpus_reserved, env=env, nvml=nvml, interval_s=0.05) as monitor:
        time.sleep(0.2)
        usage = monitor.take()
    assert nvml.up == 0  # every nvmlInit was shut down
    return usage


def test_only_the_assigned_gpus_are_read_by_index():
    nvml = FakeNvml()
    usage = _usage({"CUDA_VISIBLE_DEVICES": "1,3"}, 2, nvml)
    assert nvml.read == {1, 3}
    assert usage.gpus == 2 and usage.gpu_util_percent == pytest.approx(30.0)  # mean of 20 % and 40 %
    assert usage.gpu_memory_peak_mib == (2 + 4) * 1024  # Σ over the trial's GPUs


def test_only_the_assigned_gpus_are_read_by_uuid_and_a_mig_instance_has_memory_but_no_utilization():
    nvml = FakeNvml()
    usage = _usage({"CUDA_VISIBLE_DEVICES": "GPU-2ccc-3333"}, 1, nvml)
    assert nvml.read == {2} and (usage.gpus, usage.gpu_util_percent, usage.gpu_memory_peak_mib) == (1, 30.0, 3 * 1024)
    nvml = FakeNvml()
    usage = _usage({"CUDA_VISIBLE_DEVICES": FakeNvml.MIG}, 1, nvml)
    assert nvml.read == {9} and (usage.gpus, usage.gpu_util_percent, usage.gpu_memory_peak_mib) == (1, None, 2 * 1024)


@pytest.mark.parametrize("env, reserved", [({"CUDA_VISIBLE_DEVICES": ""}, 1), ({}, 0),
                                           ({"CUDA_VISIBLE_DEVICES": "0"}, 0)])
def test_no_gpu_is_none_never_zero_and_nvml_is_not_even_started(env, reserved):
    nvml = FakeNvml()
    usage = _usage(env, reserved, nvml)
    assert (usage.gpus, usage.gpu_util_percent, usage.gpu_memory_peak_mib) == (0, None, None)
    assert nvml.read == set() and nvml.up == 0


def test_unset_means_the_first_gpus_of_the_reservation():
    nvml = FakeNvml()
    usage = _usage({}, 1, nvml)
    assert nvml.read == {0} and usage.gpu_util_percent == 10.0


def test_a_gpu_without_nvml_is_counted_but_not_measured():
    usage = _usage({"CUDA_VISIBLE_DEVICES": "0"}, 1, FakeNvml(broken=True))
    assert (usage.gpus, usage.gpu_util_percent, usage.gpu_memory_peak_mib) == (1, None, None)
    with Monitor(cpus_reserved=1, gpus_reserved=1, env={"CUDA_VISIBLE_DEVICES": "0"}, nvml=None) as monitor:
        assert monitor.take().gpus == 1


# --------------------------------------------------------------------------- the sinks

def test_mlflow_gets_the_measured_figures_under_the_system_prefix_and_no_gpu_figure_without_a_gpu():
    cpu_only = Iteration(iteration=1, cpu_percent=150.0, cpus_reserved=2.0, rss_peak_mib=1000.0, gpus=0)
    logged = cpu_only.logged_metrics()
    assert {k: v for k, v in logged.items() if k.startswith("system/")} == {
        "system/trial_cpu_utilization_percentage": 75.0, "system/trial_cpu_cores": 1.5,
        "system/trial_rss_megabytes": pytest.approx(1048.576)}
    gpu = Iteration(iteration=1, gpus=1, gpu_util_percent=80.0, gpu_memory_peak_mib=2000.0).logged_metrics()
    assert gpu["system/trial_gpu_utilization_percentage"] == 80.0
    assert gpu["system/trial_gpu_memory_megabytes"] == pytest.approx(2097.152)
    assert not any(k.startswith("system/") for k in Iteration(iteration=1).logged_metrics())  # an older record


def test_an_older_row_loads_with_the_figures_unknown():
    old = Iteration.from_metrics({"iteration": 1, "eval_loss": 2.0, "time_this_iter_s": 3.0})
    assert (old.cpu_percent, old.gpus, old.gpu_util_percent, old.monitor_s) == (None, None, None, None)
    assert Iteration.from_metrics(Iteration(iteration=1, cpu_percent=99.0, gpus=0).to_dict()).cpu_percent == 99.0


# --------------------------------------------------------------------------- the comparison

def _usage_row(it: int, end: float, loss: float, cpu: float, *, gpus: int = 0, gpu_util: float | None = None):
    return row(it, end, 10, loss, cpu_percent=cpu, cpus_reserved=2.0, rss_peak_mib=500.0, gpus=gpus,
               gpu_util_percent=gpu_util, gpu_memory_peak_mib=1000.0 if gpus else None, monitor_s=0.01)


def _record(strategy: str, seed: int = 0, *, gpu: bool = False, measured: bool = True):
    """Two trials of three 10 s iterations on 2 reserved CPUs each: a keeps 1.5 cores busy, b 0.5
    (with a GPU: a's at 80 %, b's at 40 %)."""
    run = Run(strategy, seed=seed)
    for tid, cpu, util, offset in (("a", 150.0, 80.0, 0), ("b", 50.0, 40.0, 5)):
        if measured:
            rows = [_usage_row(i, offset + 10 * i, 3.0 - i, cpu, gpus=int(gpu), gpu_util=util if gpu else None)
                    for i in (1, 2, 3)]
        else:
            rows = [row(i, offset + 10 * i, 10, 3.0 - i) for i in (1, 2, 3)]
        run.trial(tid, rows)
    return run.record(wall=40, slots=2)


def test_device_utilization_is_of_what_the_trials_held_while_they_held_it():
    cpu, gpu, gpus = device_utilization(_record("pbt"))
    assert cpu == pytest.approx((45 + 15) / (60 * 2))  # CPU-seconds of 60 iteration-seconds on 2 CPUs each
    assert math.isnan(gpu) and gpus == 0.0
    s = summarize(_record("pbt", gpu=True))
    assert s.cpu_utilization == pytest.approx(0.5)
    assert s.gpu_utilization == pytest.approx(0.6) and s.gpus_per_trial == 1.0
    assert s.slot_utilization == pytest.approx(60 / (35 * 2))  # the slot view is unchanged


def test_the_comparison_shows_device_utilization_beside_slot_utilization_and_says_no_gpu():
    aggregates = aggregate([summarize(_record("pbt", seed=0)), summarize(_record("pbt", seed=1)),
                            summarize(_record("fifo", gpu=True))])
    table = comparison_table(aggregates)
    slot = table.header.index("slot utilization")
    assert table.header[slot + 1: slot + 3] == ["CPU utilization (of the CPUs held)",
                                                "GPU utilization (of the GPUs held)"]
    by_strategy = {r[0]: r for r in table.rows}
    assert by_strategy["pbt"][slot + 1: slot + 3] == ["50%", "no GPU"]
    assert by_strategy["fifo"][slot + 1: slot + 3] == ["50%", "60%"]
    lines = list(csv.reader(io.StringIO(comparison_csv(aggregates))))
    header = lines[0]
    assert header[header.index("slot_utilization") + 1: header.index("slot_utilization") + 4] == [
        "cpu_utilization", "gpu_utilization", "gpus_per_trial"]
    pbt = dict(zip(header, next(line for line in lines[1:] if line[0] == "pbt")))
    assert (float(pbt["cpu_utilization"]), pbt["gpu_utilization"], pbt["gpus_per_trial"]) == (0.5, "", "0.0")
    evidence = {v.option: v for v in quiz.q1(next(a for a in aggregates if a.strategy == "pbt"))[0]}["B"].evidence
    assert "slot utilization 86% of 2 slots (how long the trials held them)" in evidence
    assert "CPU 50% of the CPUs reserved, no GPU" in evidence


def test_records_of_an_older_harness_still_summarize_and_show_not_available():
    s = summarize(_record("pbt", measured=False))
    assert math.isnan(s.cpu_utilization) and math.isnan(s.gpu_utilization) and math.isnan(s.gpus_per_trial)
    (a,) = aggregate([s])
    slot = comparison_table([a]).header.index("slot utilization")
    assert comparison_table([a]).rows[0][slot: slot + 3] == ["86%", "n/a", "n/a"]
    assert "CPU not recorded, GPU not recorded" in {v.option: v for v in quiz.q1(a)[0]}["B"].evidence
