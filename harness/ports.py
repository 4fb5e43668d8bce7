"""Free ports for every port a Ray node opens, chosen per job so two jobs on one node never collide."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack

#: One port each; the worker range is chosen separately as a block of consecutive free ports.
SINGLE_PORTS = (
    "RAY_GCS_PORT", "RAY_DASHBOARD_PORT", "RAY_DASHBOARD_AGENT_LISTEN_PORT", "RAY_DASHBOARD_AGENT_GRPC_PORT",
    "RAY_NODE_MANAGER_PORT", "RAY_OBJECT_MANAGER_PORT", "RAY_METRICS_EXPORT_PORT", "RAY_RUNTIME_ENV_AGENT_PORT",
)


def _bind(stack: ExitStack, ip: str, port: int) -> int:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind((ip, port))
    return sock.getsockname()[1]


def choose(ip: str = "127.0.0.1", worker_ports: int = 64, attempts: int = 200) -> dict[str, int]:
    """Distinct free ports on ``ip`` (held open together while choosing, so none repeats) plus a
    block of ``worker_ports`` consecutive free ports for Ray's workers."""
    rng = random.SystemRandom()
    with ExitStack() as stack:
        ports = {name: _bind(stack, ip, 0) for name in SINGLE_PORTS}
        for _ in range(attempts):
            base = rng.randrange(20000, 60000 - worker_ports)
            try:
                with ExitStack() as block:
                    for port in range(base, base + worker_ports):
                        _bind(block, ip, port)
            except OSError:
                continue
            if not any(base <= p < base + worker_ports for p in ports.values()):
                ports["RAY_MIN_WORKER_PORT"] = base
                ports["RAY_MAX_WORKER_PORT"] = base + worker_ports - 1
                return ports
    raise RuntimeError(f"no block of {worker_ports} free ports found on {ip} in {attempts} attempts")
