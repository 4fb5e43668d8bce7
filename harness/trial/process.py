"""What a trial process sets up once: its thread count, its start time, its garbage collector."""

from __future__ import annotations

import gc
import time

_PROCESS_CLAIMED = False
_FROZEN = False


def started_here() -> float:
    """Seconds from this process's creation to now, the first time it is asked; 0 afterwards (a
    reused Ray actor, or the driver itself, paid no process start for this segment)."""
    global _PROCESS_CLAIMED
    if _PROCESS_CLAIMED:
        return 0.0
    _PROCESS_CLAIMED = True
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def freeze_imports() -> None:
    """Move the objects of the imported modules out of the garbage collector's reach, once per
    process. The Trainer runs a full ``gc.collect()`` at the start of every ``train()``
    (accelerate's ``free_memory``); over torch's and transformers' module objects that took 0.2 s,
    as long as a tiny model's whole epoch, in every trial segment (measured with cProfile)."""
    global _FROZEN
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True


def set_threads(cpus_per_worker: float) -> None:
    """One torch thread per reserved CPU: a trial on 0.5 or 1 CPU must not spread over the node."""
    import torch

    torch.set_num_threads(max(1, int(cpus_per_worker)))
