"""Stop requests to the driver, caught from its first line.

SLURM asks a job to stop with SIGUSR1 before its time limit (``--signal=B:USR1@120``, forwarded by
the head job) and with SIGTERM on ``scancel``. Either can come in the first seconds of a start or
a resume: a requeued job starts near its end, a short time limit is short. The default action of
both signals ends the process (exit 138 for SIGUSR1) wherever it is, so :func:`install` runs before
any slow import (``python -m harness`` calls it on its first line; it imports only the standard
library) and turns them into a request the driver honours at its next safe point:

* before the strategy has started anything: the run folder (created atomically) is left
  resumable, and the driver exits 75 with the line that resumes it;
* while Ray Tune runs: Ray Tune stops on SIGUSR1 by itself, checkpointing what is in flight;
  a request that came just before its handler was installed is passed on to it
  (:func:`forward_to_tune`);
* the sequential grid checks :func:`event` after each iteration.

SIGTERM once the strategy runs keeps its usual meaning, "end now" (the head job sends it on its
way out and stops Ray right after): the driver says so in one line and exits 143 at once, like the
signal's default action; the watchdog ends what it had started and ``--resume`` continues from the
event log and the saved checkpoints. ``ray.init`` installs its own SIGTERM handlers (a Python one
that unwinds with ``sys.exit``, and a C one that arms a 3-second abort, ray#64830: exits by
SIGABRT were seen): :func:`reclaim` takes the signals back after it.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

_event = threading.Event()
_reason = ""
_running = False
_forwarded = False
_installed = False

#: The signals that ask the driver to stop.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def _handler(signum: int, frame: Any) -> None:
    global _reason
    name = signal.Signals(signum).name
    if signum == signal.SIGTERM and _running:  # "end now"
        os.write(2, b"SIGTERM: the driver ends now; continue the run with --resume <its run folder>\n")
        os._exit(128 + signal.SIGTERM)
    if not _reason:
        _reason = name
    _event.set()


def install() -> None:
    """Catch SIGUSR1 and SIGTERM from now on (main thread only; idempotent)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    _installed = True


def reclaim() -> None:
    """Take the stop signals back: after ``ray.init`` (its SIGTERM handlers, see the module
    docstring) and after ``Tuner.fit`` (Ray Tune installs a SIGUSR1 handler and never puts the
    previous one back), so that a stop asked for then reaches the harness again."""
    if _installed and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _handler)


def done() -> None:
    """The driver's work is over: ignore SIGUSR1 from now on. Python gives every signal it handled its
    default action back when the interpreter shuts down (SIGUSR1's ends the process, exit 138),
    and Ray's shutdown then takes seconds; an ignored signal stays ignored. SIGTERM keeps ending
    the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def requested() -> str:
    """The signal that asked for a stop ("SIGUSR1", "SIGTERM"), or "" when none did."""
    return _reason


def event() -> threading.Event:
    """Set once a stop was requested (the sequential grid polls it between iterations)."""
    return _event


def running() -> None:
    """The strategy starts: a SIGTERM from now on ends the driver at once (see the module docstring)."""
    global _running
    _running = True


def idle() -> None:
    """The strategy is over (the driver may start another run: harness bench): SIGTERM is again a
    request honoured at the next safe point, not "end now"."""
    global _running
    _running = False


def forward_to_tune() -> None:
    """Pass a request that arrived before Ray Tune's own SIGUSR1 handler was installed on to it
    (called from inside ``Tuner.fit``, where that handler is in place); once."""
    global _forwarded
    if _reason and not _forwarded:
        _forwarded = True
        os.kill(os.getpid(), signal.SIGUSR1)


def reset() -> None:
    """Forget any request (tests that run several drivers in one process)."""
    global _reason, _running, _forwarded
    _event.clear()
    _reason, _running, _forwarded = "", False, False
