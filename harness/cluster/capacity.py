"""The seed exercise's capacity check, as pure functions.

A trial takes W workers of Cw CPUs and Gw GPUs, all on one node. A node of Cnode CPUs and Gnode
GPUs, Csys of them left to the system (Ray's own processes, the driver), holds Tnode trials at
once where

    Csys + Tnode * W * Cw <= Cnode   and   Tnode * W * Gw <= Gnode

(the seed's worked example: W=2, Cw=2, Gw=1, Cnode=20, Gnode=8, Csys=2 gives Tnode=4). Trials
beyond what all nodes hold at once wait PENDING in Ray until a slot frees up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.config import ConfigError


class CapacityError(ConfigError):
    """No trial can ever be placed; the message gives the numbers and the fix."""


@dataclass(frozen=True)
class Node:
    cpus: float  # Cnode
    gpus: float = 0  # Gnode
    system_cpus: float = 0  # Csys


@dataclass(frozen=True)
class TrialShape:
    workers: int  # W
    cpus_per_worker: float  # Cw
    gpus_per_worker: float = 0  # Gw

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True)
class Plan:
    per_node: list[int]
    population: int
    shape: TrialShape

    @property
    def concurrent(self) -> int:
        return sum(self.per_node)

    @property
    def pending(self) -> int:
        """Trials that wait PENDING while the first wave runs."""
        return max(0, self.population - self.concurrent)

    @property
    def waves(self) -> int:
        return math.ceil(self.population / self.concurrent) if self.concurrent else 0

    def summary(self) -> str:
        s = self.shape
        head = (f"{len(self.per_node)} node(s) hold {self.concurrent} trial(s) at once "
                f"({' + '.join(map(str, self.per_node))}; one trial = W={s.workers} x "
                f"({s.cpus_per_worker:g} CPU, {s.gpus_per_worker:g} GPU))")
        if self.pending:
            return (f"{head}; population {self.population}: {self.pending} trial(s) will wait PENDING "
                    f"until a slot frees up ({self.waves} waves for trials that run to the end)")
        return f"{head}; population {self.population}: all run at once, nothing waits PENDING"


def trials_per_node(node: Node, shape: TrialShape) -> int:
    """Largest Tnode with Csys + Tnode*W*Cw <= Cnode and Tnode*W*Gw <= Gnode."""
    if shape.cpus <= 0:
        raise ValueError("a trial needs a positive number of CPUs")
    by_cpu = math.floor((node.cpus - node.system_cpus) / shape.cpus + 1e-9)
    by_gpu = math.floor(node.gpus / shape.gpus + 1e-9) if shape.gpus > 0 else by_cpu
    return max(0, min(by_cpu, by_gpu))


def plan(nodes: list[Node], shape: TrialShape, population: int) -> Plan:
    """How many trials run at once on ``nodes``; :class:`CapacityError` if none ever can."""
    per_node = [trials_per_node(n, shape) for n in nodes]
    result = Plan(per_node=per_node, population=population, shape=shape)
    if result.concurrent == 0:
        biggest = max(nodes, key=lambda n: (n.cpus - n.system_cpus, n.gpus))
        raise CapacityError(
            f"no trial fits on any node: one trial needs W*Cw = {shape.workers}x{shape.cpus_per_worker:g} = "
            f"{shape.cpus:g} CPUs and W*Gw = {shape.workers}x{shape.gpus_per_worker:g} = {shape.gpus:g} GPUs, "
            f"the largest node offers Cnode - Csys = {biggest.cpus:g} - {biggest.system_cpus:g} = "
            f"{biggest.cpus - biggest.system_cpus:g} CPUs and Gnode = {biggest.gpus:g} GPUs; request bigger "
            "nodes (--cpus-per-task, --gres=gpu:N) or lower resources.workers_per_trial / cpus_per_worker / "
            "gpus_per_worker"
        )
    return result
