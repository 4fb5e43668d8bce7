"""Ports for every port a Ray node opens, chosen per job so two jobs on one node never collide.

They come from outside the kernel's ephemeral range (``net.ipv4.ip_local_port_range``): a port in
that range can be handed to any outgoing connection between the moment it is chosen here and the
moment ``ray start`` binds it. The SLURM jobs still retry ``ray start`` on a bind conflict, since
another job can take a port in that window too.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

#: One port each; the worker range is chosen separately as a block of consecutive free ports.
SINGLE_PORTS = (
    "RAY_GCS_PORT", "RAY_DASHBOARD_PORT", "RAY_DASHBOARD_AGENT_LISTEN_PORT", "RAY_DASHBOARD_AGENT_GRPC_PORT",
    "RAY_NODE_MANAGER_PORT", "RAY_OBJECT_MANAGER_PORT", "RAY_METRICS_EXPORT_PORT", "RAY_RUNTIME_ENV_AGENT_PORT",
)
#: Below this, ports are commonly assigned to services (and < 1024 needs privileges).
LOWEST = 10000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = map(int, path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def candidate_ranges(ephemeral: tuple[int, int]) -> list[range]:
    low, high = ephemeral
    return [r for r in (range(LOWEST, min(low, 65536)), range(max(high + 1, LOWEST), 65536)) if len(r)]


def _bind(stack: ExitStack, port: int) -> None:
    """Bind every address: a port some process listens on anywhere on this host fails here, as it
    would for Ray's GCS and raylet, which bind all interfaces."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("0.0.0.0", port))


def choose(worker_ports: int = 64, attempts: int = 500, *, ephemeral: tuple[int, int] | None = None,
           rng: random.Random | None = None) -> dict[str, int]:
    """Distinct free ports outside the ephemeral range (held open together while choosing, so
    none repeats) plus a block of ``worker_ports`` consecutive free ports for Ray's workers."""
    rng = rng or random.SystemRandom()
    ranges = candidate_ranges(ephemeral or ephemeral_range())
    if not ranges:
        raise RuntimeError(f"no ports outside the ephemeral range {ephemeral} above {LOWEST}")
    weights = [len(r) for r in ranges]
    ports: dict[str, int] = {}
    with ExitStack() as stack:
        for _ in range(attempts):
            if len(ports) == len(SINGLE_PORTS):
                break
            port = rng.choice(rng.choices(ranges, weights)[0])
            if port in ports.values():
                continue
            try:
                _bind(stack, port)
            except OSError:
                continue
            ports[SINGLE_PORTS[len(ports)]] = port
        else:
            raise RuntimeError(f"found {len(ports)} of {len(SINGLE_PORTS)} free ports in {attempts} attempts")
        wide = [r for r in ranges if len(r) > worker_ports]
        for _ in range(attempts if wide else 0):
            block = rng.choices(wide, [len(r) for r in wide])[0]
            base = rng.randrange(block.start, block.stop - worker_ports)
            if any(base <= p < base + worker_ports for p in ports.values()):
                continue
            try:
                with ExitStack() as trial:
                    for port in range(base, base + worker_ports):
                        _bind(trial, port)
            except OSError:
                continue
            ports["RAY_MIN_WORKER_PORT"] = base
            ports["RAY_MAX_WORKER_PORT"] = base + worker_ports - 1
            return ports
    raise RuntimeError(f"no block of {worker_ports} free ports outside the ephemeral range in {attempts} attempts")
