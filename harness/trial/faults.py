"""Faults on purpose, for the tests only: production never sets ``HARNESS_FAULT``.

``HARNESS_FAULT=<trial>:<iteration>:<raise|kill>`` makes that trial (``c02`` or its full id) fail
once at that iteration, after its evaluation and before its report, by raising or by SIGKILLing
its own process. ``HARNESS_FAULT_DIR`` (required with it) holds the marker that makes it once:
the retry from the last checkpoint passes.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from harness.contract.record import short_id

log = logging.getLogger(__name__)

FAULT_ENV, FAULT_DIR_ENV = "HARNESS_FAULT", "HARNESS_FAULT_DIR"


class InjectedFault(RuntimeError):
    """The failure HARNESS_FAULT asked for."""


def maybe_fail(trial_id: str, iteration: int) -> None:
    """Fail here if ``HARNESS_FAULT`` names this trial and iteration (once); otherwise nothing."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    who, at, action = spec.split(":")
    if who not in (trial_id, short_id(trial_id)) or int(at) != iteration:
        return
    marker = Path(os.environ[FAULT_DIR_ENV]) / f"{short_id(trial_id)}-{trial_id}-{iteration}"
    try:
        marker.touch(exist_ok=False)  # once: the retry finds the marker and carries on
    except FileExistsError:
        return
    log.warning("%s: injected fault at iteration %d (%s)", trial_id, iteration, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"{FAULT_ENV}={spec}: trial {trial_id} fails at iteration {iteration}")
