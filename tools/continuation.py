"""How a trial's next epoch goes when it is continued, four ways, from the same weights and lr.

    python tools/continuation.py --seeds 0 1 2 --lr 1.2e-4 --bs 1

``make bench-peer`` found that a trial neither side exploited, trained on at its own lr from the
same weights after epoch 1, reaches a lower eval_loss on transformers' own path than in the
harness. This tool isolates why, outside Ray, on the smoke preset's model and data at each seed:

* ``one Trainer``: one ``Trainer`` trains both epochs (what ``hyperparameter_search`` continues: its
  checkpoint holds the optimizer, so AdamW's moments and step count carry on);
* ``fresh Trainer (harness)``: epoch 1, then a new ``Trainer`` from the weights for epoch 2 with
  ``seed + 1`` (what :mod:`harness.trial.segment` does: the moments start from zero);
* ``fresh Trainer, moments kept``: as the harness, with the first Trainer's AdamW state loaded
  and its lr and weight decay set to the trial's own (the resume trap avoided, the moments kept);
* ``fresh Trainer, same seed``: as the harness with ``seed`` instead of ``seed + 1`` (the shuffle).

It prints one markdown row per seed: eval_loss after epoch 1 and after epoch 2 each way. Where
``moments kept`` equals ``one Trainer`` and the two fresh ones do not, the moments are the gap.
A developer tool: not part of the harness package.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAYS = ("one Trainer", "fresh Trainer (harness)", "fresh Trainer, moments kept", "fresh Trainer, same seed")


def continue_four_ways(seed: int, lr: float, bs: int, cache: Path, wd: float = 0.0) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from harness import tasks
    from harness.trial.data import PadCollator, TokenizedDataset, load_prepared, prepare
    from harness.trial.model import load_tokenizer, resolve_model_path

    cfg = tasks.resolve("smoke", overrides={"seed": seed}, override_origins={"seed": "--seeds"})
    model_path = resolve_model_path(cfg.model, seed=seed, cache_dir=cache)
    tokenizer = load_tokenizer(model_path)
    splits = load_prepared(prepare(cfg.data, tokenizer, seed=seed, max_length=cfg.model.max_length,
                                   cache_dir=cache)).splits
    train, val = TokenizedDataset(splits["train"]), TokenizedDataset(splits["validation"])
    collator = PadCollator(tokenizer.pad_token_id)
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()

    def trainer(model: Any, epochs: int, shuffle_seed: int) -> Any:
        args = TrainingArguments(output_dir=str(cache / "continuation-hf"), learning_rate=lr,
                                 per_device_train_batch_size=bs, weight_decay=wd, num_train_epochs=epochs,
                                 eval_strategy="no", save_strategy="no", logging_strategy="no",
                                 per_device_eval_batch_size=cfg.train.eval_batch_size,
                                 lr_scheduler_type="constant", seed=shuffle_seed, use_cpu=True,
                                 report_to="none", disable_tqdm=True)
        made = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, data_collator=collator)
        made.remove_callback(PrinterCallback)  # the table is the output
        return made

    def model(weights: dict[str, Any] | None = None) -> Any:
        m = AutoModelForCausalLM.from_pretrained(model_path)
        if weights is not None:
            m.load_state_dict(weights)
        return m

    out: dict[str, float] = {}
    whole = trainer(model(), 2, seed)
    whole.train()
    out[WAYS[0]] = whole.evaluate()["eval_loss"]
    first = trainer(model(), 1, seed)
    first.train()
    out["epoch 1"] = first.evaluate()["eval_loss"]
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    moments = first.optimizer.state_dict()
    for way, shuffle_seed, keep in ((WAYS[1], seed + 1, False), (WAYS[2], seed + 1, True), (WAYS[3], seed, False)):
        second = trainer(model(weights), 1, shuffle_seed)
        if keep:
            second.create_optimizer_and_scheduler(num_training_steps=len(train))
            second.optimizer.load_state_dict(moments)
            for group in second.optimizer.param_groups:  # the trial's own lr and weight decay, not the checkpoint's
                group["lr"] = group["initial_lr"] = lr
                group["weight_decay"] = wd if group["weight_decay"] else 0.0
        second.train()
        out[way] = second.evaluate()["eval_loss"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=1.2e-4)
    p.add_argument("--bs", type=int, default=1, choices=(1, 2))
    p.add_argument("--cache", default=os.environ.get("HARNESS_CACHE") or str(ROOT / "results" / ".cache"),
                   help="the harness cache (make prepare's; default $HARNESS_CACHE, else results/.cache)")
    args = p.parse_args(argv)
    if not 0 < args.lr < 1:
        p.exit(2, f"error: --lr {args.lr} is not a learning rate; give one in (0, 1), e.g. --lr 1.2e-4\n")
    print(f"eval_loss, lr {args.lr:g}, bs {args.bs}, constant schedule, smoke preset\n")
    print("| seed | after epoch 1 | " + " | ".join(f"epoch 2: {w}" for w in WAYS) + " |")
    print("|---|---|" + "---|" * len(WAYS))
    for seed in args.seeds:
        got = continue_four_ways(seed, args.lr, args.bs, Path(args.cache))
        print(f"| {seed} | {got['epoch 1']:.4f} | " + " | ".join(f"{got[w]:.4f}" for w in WAYS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
