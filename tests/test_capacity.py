from __future__ import annotations

import random
import socket
import subprocess
import sys

import pytest

from harness.cluster.capacity import CapacityError, Node, TrialShape, plan, trials_per_node
from harness.cluster.ports import LOWEST, SINGLE_PORTS, choose, ephemeral_range

pytestmark = pytest.mark.unit

SEED_TRIAL = TrialShape(workers=2, cpus_per_worker=2, gpus_per_worker=1)


def test_the_seed_worked_example_gives_four_trials_per_node():
    # W=2, Cw=2, Gw=1, Cnode=20, Gnode=8, Csys=2: 2 + 4*2*2 = 18 <= 20 and 4*2*1 = 8 <= 8
    assert trials_per_node(Node(cpus=20, gpus=8, system_cpus=2), SEED_TRIAL) == 4


@pytest.mark.parametrize(
    "node, expected",
    [
        (Node(cpus=20, gpus=4, system_cpus=2), 2),  # GPU-bound
        (Node(cpus=10, gpus=8, system_cpus=2), 2),  # CPU-bound: 2 + 2*4 = 10
        (Node(cpus=9, gpus=8, system_cpus=2), 1),
        (Node(cpus=5, gpus=8, system_cpus=2), 0),
    ],
)
def test_the_tighter_of_the_two_checks_wins(node, expected):
    assert trials_per_node(node, SEED_TRIAL) == expected


def test_pending_trials_are_counted_and_explained():
    p = plan([Node(cpus=20, gpus=8, system_cpus=2)] * 1, SEED_TRIAL, population=8)
    assert (p.concurrent, p.pending, p.waves) == (4, 4, 2)
    assert "4 trial(s) will wait PENDING" in p.summary()
    p2 = plan([Node(cpus=20, gpus=8, system_cpus=2)] * 2, SEED_TRIAL, population=8)
    assert p2.pending == 0 and "nothing waits PENDING" in p2.summary()


def test_cpu_only_trials_and_fractional_cpus():
    assert trials_per_node(Node(cpus=2), TrialShape(1, 0.5)) == 4
    assert trials_per_node(Node(cpus=1), TrialShape(2, 0.5)) == 1


def test_no_trial_fits_is_an_error_with_the_numbers_and_the_fix():
    with pytest.raises(CapacityError) as err:
        plan([Node(cpus=20, gpus=1, system_cpus=2)], SEED_TRIAL, population=8)
    msg = str(err.value)
    assert "2x1 = 2 GPUs" in msg and "Gnode = 1" in msg and "--gres=gpu:N" in msg


def test_capacity_cli_exits_2_when_nothing_fits():
    cmd = [sys.executable, "-m", "harness", "capacity", "--preset", "seed", "--nodes", "1",
           "--cpus-per-node", "20", "--gpus-per-node", "1", "--system-cpus", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    cmd[cmd.index("1", cmd.index("--gpus-per-node"))] = "8"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "hold 4 trial(s) at once" in done.stdout and "population 12: 8 trial(s) will wait" in done.stdout


def test_ports_are_distinct_free_and_leave_a_worker_block():
    ports = choose(worker_ports=32)
    singles = [ports[name] for name in SINGLE_PORTS]
    assert len(set(singles)) == len(singles)
    lo, hi = ports["RAY_MIN_WORKER_PORT"], ports["RAY_MAX_WORKER_PORT"]
    assert hi - lo + 1 == 32 and not any(lo <= p <= hi for p in singles)
    for port in singles + [lo, hi]:
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))  # still free after choosing, on every address


def test_ports_stay_outside_the_ephemeral_range():
    low, high = ephemeral_range()
    for seed in range(10):
        ports = choose(worker_ports=16, rng=random.Random(seed))
        assert all(p >= LOWEST and not low <= p <= high for p in ports.values()), ports


def test_a_port_in_use_on_any_address_is_never_chosen():
    with socket.socket() as busy:
        busy.bind(("127.0.0.3", LOWEST + 5))
        busy.listen()
        for seed in range(30):  # 40 candidate ports, 8 singles + a block of 4: the busy one must be avoided
            ports = choose(worker_ports=4, ephemeral=(LOWEST + 40, 65535), rng=random.Random(seed))
            assert LOWEST + 5 not in ports.values()
            assert not ports["RAY_MIN_WORKER_PORT"] <= LOWEST + 5 <= ports["RAY_MAX_WORKER_PORT"]
