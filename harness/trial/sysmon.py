"""What a trial's own processes use of the machine, iteration by iteration.

Slot utilization says a trial held its slot; this says whether it kept the slot's CPUs and GPUs
busy. MLflow's ``log_system_metrics`` cannot: it logs the whole node and every GPU on it, whoever
uses them. :class:`Monitor` measures only

* the trial's processes: this one (the trial process Ray started) and the descendants it starts
  while measured, found afresh at every sample: the torch.distributed ranks of W > 1
  (:mod:`harness.trial.ranks`) and whatever they start. Children the process already had when the
  monitor was made are not the trial's and are left out with their own descendants: the manual
  grid trains in the driver's process, whose watchdog child runs beside it. (The driver's own
  threads, MLflow's logging among them, are in the process and counted: the manual grid's CPU
  figure includes them.)
* the GPUs Ray assigned to the trial (:func:`assigned_gpus`), read through NVML (``pynvml``, from
  the ``nvidia-ml-py`` package). Without a GPU, or without NVML, the GPU figures are None, never 0.

CPU is exact to the kernel's clock tick (10 ms a process), over the iteration's wall time: every
process of the tree is read at every sample and iteration boundary (user + system, plus
``children_user``/``children_system``: the CPU of the children it has reaped), and what each ran
since its previous read is summed. A process once seen is read until it is gone (the kernel's
children lists are not atomic: a listing may miss one). When one the tree reaped is gone, its
whole time shows in its reaper's ``children_*`` instead, and what was counted of it already is
taken off, so a rank that exits between two samples counts whole and once; only one that exits
unreaped by the tree (re-parented to init after its parent died) loses what it ran since the
previous sample. Memory (Σ RSS of the tree, pages shared between processes counted in each) and
the GPUs (utilization and memory used) are sampled by a daemon thread: the peak and the
time-weighted mean over the samples.

The cost, measured as the CPU time the sampling threads spend (which is also about the time the
sampler holds the GIL the trainer needs): about 0.1 ms per process read and 0.5 ms to list the
descendants of a process with 40 threads (``/proc/<pid>/task/<tid>/children``; psutil's
``children()``, the fallback, reads every process of the node, 3 ms on 120). The thread waits
:data:`INTERVAL_S` between samples, or longer when a sample cost more than :data:`BUDGET` of
that, and reports what it spent per iteration (``monitor_s``), so the cost is in every record:
in the smoke preset's PBT run (4 trials in Ray workers on 2 shared cores, iterations of ~7 s) it
was 0.25% of ``time_this_iter_s`` (median; 0.35% at most).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psutil

from harness.contract.iteration import IterationReport

try:
    import pynvml
except ImportError:  # the image and the venv install nvidia-ml-py; without it: no GPU figures
    pynvml = None

log = logging.getLogger(__name__)

#: Seconds between two samples of memory and GPUs (CPU is exact whatever the interval).
INTERVAL_S = 0.5
#: At most this fraction of the time goes to sampling: a dearer sample stretches the interval.
BUDGET = 0.005
_MIB = 2**20


@dataclass(frozen=True)
class Usage:
    """One iteration's figures, named as :class:`~harness.contract.iteration.IterationReport`'s fields."""

    cpu_percent: float | None
    cpus_reserved: float
    rss_peak_mib: float | None
    gpus: int
    gpu_util_percent: float | None
    gpu_memory_peak_mib: float | None
    monitor_s: float


def visible_devices(env: Mapping[str, str]) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (None when unset: every GPU is visible). As CUDA
    reads it, a negative index ends the list (``-1`` hides every GPU)."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    out = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry or entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        out.append(entry)
    return out


def assigned_gpus(gpus_reserved: float, env: Mapping[str, str]) -> list[str]:
    """The GPUs the trial may use, as ``CUDA_VISIBLE_DEVICES`` names them (an index, or a ``GPU-``/
    ``MIG-`` UUID). Ray sets ``CUDA_VISIBLE_DEVICES`` to a trial's GPUs but, since 2.4x, leaves it
    alone for a trial without any (ray#54868): so the reservation decides whether there are any,
    the variable which. Unset (the manual grid, outside Ray): the first ones, those a process
    that is not restricted uses."""
    if gpus_reserved <= 0:
        return []
    visible = visible_devices(env)
    return visible if visible is not None else [str(i) for i in range(math.ceil(gpus_reserved))]


def nvml_handles(nvml: Any, ids: list[str]) -> list[Any]:
    """NVML handles of ``ids``: a UUID (``GPU-...``, ``MIG-...``, or a prefix of one, as CUDA
    accepts) by UUID; an index by NVML's index.

    The CUDA_DEVICE_ORDER caveat: an index in ``CUDA_VISIBLE_DEVICES`` is CUDA's ordinal, which
    follows CUDA_DEVICE_ORDER (default FASTEST_FIRST), while NVML numbers the GPUs by PCI bus.
    They agree on a node of identical GPUs (ties are broken by PCI bus) or with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; on a node that mixes GPU models an index may name another
    GPU here than the one CUDA gives the trial. UUIDs are unambiguous.
    """
    handles, everyone = [], None
    for entry in ids:
        if entry.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
            continue
        try:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
        except nvml.NVMLError:
            if everyone is None:
                everyone = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            found = [h for h in everyone if _text(nvml.nvmlDeviceGetUUID(h)).startswith(entry)]
            if len(found) != 1:
                raise
            handles.append(found[0])
    return handles


def descendants(pid: int, skip: frozenset[int] = frozenset()) -> list[int]:
    """The processes below ``pid``, without those in ``skip`` and theirs: from the kernel's
    per-thread children lists where it has them (Linux with CONFIG_PROC_CHILDREN: only the tree is
    read), psutil's scan of every process otherwise."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        try:
            below = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
        out, left_out = [], set(skip)
        for p in below:  # psutil lists a parent before its children
            try:
                parent = p.ppid()
            except psutil.Error:
                continue
            if p.pid in left_out or parent in left_out:
                left_out.add(p.pid)
            else:
                out.append(p.pid)
        return out
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:  # gone
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:  # the thread ended
                continue
            kids = [k for k in kids if k not in skip]
            found += kids
            todo += kids
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _Seen:
    """A process of the tree, with what it had run (own + reaped children's CPU seconds) and its
    parent at the latest sample. 0 until read: a process first seen after the start counts whole."""

    proc: psutil.Process
    cpu: float = 0.0
    ppid: int = 0


class Monitor:
    """Samples the trial's processes and GPUs from :meth:`start` to :meth:`stop`; :meth:`take`
    closes one iteration and opens the next (use it at each report: :meth:`stamp`)."""

    def __init__(self, *, cpus_reserved: float, gpus_reserved: float, interval_s: float = INTERVAL_S,
                 env: Mapping[str, str] | None = None, nvml: Any = pynvml,
                 pid: int | None = None):
        self.cpus_reserved = float(cpus_reserved)
        self.interval_s = interval_s
        self.root = psutil.Process(pid)
        self.others = frozenset(descendants(self.root.pid))  # there before the trial: not its processes
        self.seen = {self.root.pid: _Seen(self.root)}  # every process of the tree seen and not yet gone
        self.ids = assigned_gpus(gpus_reserved, os.environ if env is None else env)
        self.nvml = nvml
        self.handles: list[Any] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.nvml_up = False
        self._open_iteration(time.monotonic())

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Monitor:
        spent = time.thread_time()
        if self.ids and self.nvml is not None:
            try:
                self.nvml.nvmlInit()
                self.nvml_up = True
                self.handles = nvml_handles(self.nvml, self.ids)
            except self.nvml.NVMLError as exc:  # no driver, no library, a GPU NVML does not know
                log.warning("no GPU figures for GPUs %s: NVML says %s", ",".join(self.ids), exc)
                self.handles = []
        with self.lock:
            self._sample_tree()  # what the processes ran before: not the trial's iterations
            self._open_iteration(time.monotonic())
            self.spent = time.thread_time() - spent
        self.thread = threading.Thread(target=self._run, name="trial-sysmon", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.nvml_up:
            self.nvml_up = False
            try:
                self.nvml.nvmlShutdown()  # type: ignore[union-attr]
            except self.nvml.NVMLError:  # type: ignore[union-attr]
                pass

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- per iteration ---------------------------------------------------------------------------

    def take(self) -> Usage:
        """This iteration's figures (since the previous :meth:`take`, or :meth:`start`); the next
        iteration starts now."""
        with self.lock:
            self._sample()
            now = time.monotonic()
            wall = now - self.opened
            usage = Usage(
                cpu_percent=100 * max(0.0, self.cpu_s) / wall if wall > 0 else None,
                cpus_reserved=self.cpus_reserved,
                rss_peak_mib=self.rss_peak / _MIB if self.rss_peak else None,
                gpus=len(self.ids),
                gpu_util_percent=self.util_area / self.util_time if self.util_time > 0 else None,
                gpu_memory_peak_mib=self.gpu_memory_peak / _MIB if self.gpu_memory_peak is not None else None,
                monitor_s=round(self.spent, 6),
            )
            self._open_iteration(now)
        return usage

    def stamp(self, report: IterationReport) -> IterationReport:
        """``report`` with this iteration's figures."""
        return dataclasses.replace(report, **dataclasses.asdict(self.take()))

    # -- sampling --------------------------------------------------------------------------------

    def _open_iteration(self, now: float) -> None:
        self.opened = self.last_sample = now
        self.cpu_s = 0.0
        self.rss_peak = 0
        self.gpu_memory_peak: int | None = None
        self.util_area = self.util_time = 0.0
        self.spent = 0.0

    def _run(self) -> None:
        wait = self.interval_s
        while not self.stopping.wait(wait):
            with self.lock:
                cost = self._sample()
            wait = max(self.interval_s, cost / BUDGET)

    def _sample(self) -> float:
        """One sample into the open iteration (the lock held); returns what it cost (this thread's CPU seconds)."""
        started = time.thread_time()
        ran, rss = self._sample_tree()
        self.cpu_s += ran
        self.rss_peak = max(self.rss_peak, rss)
        now = time.monotonic()
        if self.handles:
            self._sample_gpus(now - self.last_sample)
        self.last_sample = now
        cost = time.thread_time() - started
        self.spent += cost
        return cost

    def _sample_tree(self) -> tuple[float, int]:
        """(CPU seconds the tree ran since the previous sample, Σ RSS bytes now)."""
        for pid in descendants(self.root.pid, self.others):
            if pid not in self.seen:
                try:
                    self.seen[pid] = _Seen(psutil.Process(pid))
                except psutil.Error:  # gone already: its parent has reaped it
                    pass
        ran, rss, gone = 0.0, 0, []
        for pid, seen in self.seen.items():
            try:
                with seen.proc.oneshot():
                    t = seen.proc.cpu_times()
                    ppid = seen.proc.ppid()
                    mem = seen.proc.memory_info().rss
            except psutil.Error:
                gone.append(pid)
                continue
            cpu = t.user + t.system + t.children_user + t.children_system
            ran += cpu - seen.cpu
            seen.cpu, seen.ppid = cpu, ppid
            rss += mem
        for pid in gone:
            seen = self.seen.pop(pid)
            if seen.ppid in self.seen or seen.ppid in gone:
                # reaped by the tree: its whole time shows in its parent's children_* (now or at
                # the next sample), of which this much was counted already
                ran -= seen.cpu
        return ran, rss

    def _sample_gpus(self, dt: float) -> None:
        nvml = self.nvml
        assert nvml is not None
        utils, used = [], []
        for handle in self.handles:
            try:
                utils.append(float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            except nvml.NVMLError:  # a MIG instance has no utilization of its own
                pass
            try:
                used.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            except nvml.NVMLError:
                pass
        if utils and dt > 0:
            self.util_area += dt * sum(utils) / len(utils)
            self.util_time += dt
        if used:
            self.gpu_memory_peak = max(self.gpu_memory_peak or 0, sum(used))
