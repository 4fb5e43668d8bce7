"""The seed exercise's task: fine-tune a causal LM (BLOOM; a tiny one built offline at CI scale)
with the Hugging Face ``Trainer`` on SQuAD, one evaluation per iteration, ``eval_loss`` reported.
Its search space and budget are the configuration's own defaults (the seed's); the presets
(smoke, cpu, seed) choose its scale."""

from harness.tasks import Task

TASK = Task(
    name="squad",
    summary="the seed's trial: a causal LM fine-tuned on SQuAD with the HF Trainer (eval_loss, min)",
    # one process, or W torch.distributed ranks (DDP / DeepSpeed): harness.trial.ranks decides
    body="harness.trial.ranks:run_trial_segment",
)
