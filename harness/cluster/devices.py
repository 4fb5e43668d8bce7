"""The accelerators of this machine."""

from __future__ import annotations

import os


def cuda_devices() -> int:
    """The number of CUDA devices; with none, tell DeepSpeed (imported by transformers) so, or it
    warns in every process that it chose the CPU."""
    import torch  # 1.6 s: only the commands that train or prepare ask

    gpus = torch.cuda.device_count()
    if gpus == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return gpus
