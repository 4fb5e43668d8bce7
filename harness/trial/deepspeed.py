"""The DeepSpeed ZeRO configuration a trial trains through (``train.deepspeed``)."""

from __future__ import annotations

from typing import Any


def zero_config(stage: int) -> dict[str, Any]:
    """A ZeRO config with ``"auto"`` values that the HF Trainer fills (batch sizes, lr, clipping).

    No optimizer section: the Trainer's own torch AdamW is used (DeepSpeed's own AdamW JIT-compiles
    ops for a minute on first use). ``fp16``/``bf16`` stay ``"auto"``: the Trainer's flags decide.
    """
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "offload_optimizer": {"device": "none"},
        "offload_param": {"device": "none"},
    }
    if stage == 3:  # save_model() must gather the sharded weights into one checkpoint
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto"},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
