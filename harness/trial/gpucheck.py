"""``make gpu-check``: the seed's trial segment at the seed's shape on one GPU, without Ray or MLflow.

The GPU machine this runs on has torch and transformers but no Ray, datasets, MLflow or network,
and cannot download BLOOM-560M. So the check builds the real architecture from its config with
random weights, writes 200 training samples of 512 tokens, and drives the harness's own trial
segment (``harness.trial.segment.run_trial_segment``, the code a Tune trial runs) directly:

1. 2 iterations, fp16, plain PyTorch;
2. 2 iterations, fp16, DeepSpeed ZeRO-2 (through the torch.distributed rank the harness spawns);
3. one PBT exploit: the plain run's iteration-1 checkpoint restarted with another lr for the
   remaining iteration, and the optimizer's lr read back from the Trainer on the GPU.

It prints samples/s, tokens/s, peak GPU memory and checkpoint save/restore seconds per run, writes
them as JSON, and exits 1 when the exploit's optimizer does not use the new lr. ``--dry-run`` runs
the same on CPU at tiny shapes (the tests do).

    python -m harness.trial.gpucheck [--dry-run] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.config import ExperimentConfig, resolve
from harness.contract.iteration import HParams, IterationReport
from harness.trial.model import load_tokenizer, train_tiny_tokenizer
from harness.trial.ranks import run_trial_segment
from harness.trial.checkpoint import MODEL_DIR, Segment
from harness.trial.segment import run_segment

#: bigscience/bloom-560m's architecture (its config.json), for random init.
BLOOM_560M = {"hidden_size": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 250880}


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    n_layer: int
    n_head: int
    vocab_size: int
    train_samples: int
    eval_samples: int
    length: int
    iterations: int = 2
    batch_size: int = 2


SEED = Shape(**BLOOM_560M, train_samples=200, eval_samples=20, length=512)
DRY = Shape(hidden_size=64, n_layer=2, n_head=4, vocab_size=2000, train_samples=8, eval_samples=4, length=32)
LR, EXPLOIT_LR = 1e-4, 3e-5


def build_model(shape: Shape, out: Path, seed: int = 0) -> Path:
    """A BLOOM of ``shape`` with random weights and a locally trained tokenizer, as a model folder."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = train_tiny_tokenizer(2000, seed)
    config = BloomConfig(hidden_size=shape.hidden_size, n_layer=shape.n_layer, n_head=shape.n_head,
                         vocab_size=shape.vocab_size, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # 560M parameters initialise in seconds on the GPU, a minute on CPU
        model = BloomForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_data(shape: Shape, out: Path, pad_id: int, seed: int = 0) -> Path:
    """Tokenized splits in the harness's cache format: every sample exactly ``length`` tokens,
    loss on all of them, so tokens/s is samples/s x length."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> dict[str, list[list[int]]]:
        ids = torch.randint(pad_id + 4, 2000, (n, shape.length), generator=g).tolist()
        return {"input_ids": ids, "labels": [list(row) for row in ids]}

    torch.save({"splits": {"train": split(shape.train_samples), "validation": split(shape.eval_samples)},
                "stats": {}, "meta": {"kind": "gpu-check", "length": shape.length}}, out)
    return out


def experiment(shape: Shape, *, gpu: bool, deepspeed: bool) -> ExperimentConfig:
    """The seed preset, at the check's size, on one worker."""
    overrides = {
        "train.iterations": str(shape.iterations), "train.fp16": str(gpu).lower(),
        "train.deepspeed": str(deepspeed).lower(), "train.deepspeed_stage": "2",
        "train.lr_scheduler": "constant", "train.warmup_steps": "0",
        "model.max_length": str(shape.length), "data.train_samples": str(shape.train_samples),
        "data.eval_samples": str(shape.eval_samples),
        "resources.workers_per_trial": "1", "resources.gpus_per_worker": "1" if gpu else "0",
        "resources.cpus_per_worker": str(max(1, (os.cpu_count() or 2) // 2)),
    }
    return resolve("seed", overrides=overrides)


class Keep:
    """A reporter that keeps every iteration's metrics and checkpoint."""

    def __init__(self, folder: Path):
        self.folder, self.reports = folder, []

    def __call__(self, report: IterationReport, ckpt_dir: str) -> None:
        shutil.copytree(ckpt_dir, self.folder / f"iter{report.iteration}")
        self.reports.append(report)


@dataclass
class Figures:
    run: str
    iterations: int
    samples_per_s: float
    tokens_per_s: float
    peak_gpu_memory_mib: float
    checkpoint_save_s: float
    checkpoint_restore_s: float
    eval_loss: float
    optimizer_lr: float
    wall_s: float


def _figures(name: str, shape: Shape, reports: list[IterationReport], wall: float, restore: float = 0.0) -> Figures:
    train_s = sum(r.phases["train"] for r in reports)
    samples = shape.train_samples * len(reports)
    return Figures(
        run=name, iterations=len(reports), samples_per_s=samples / train_s, tokens_per_s=samples * shape.length / train_s,
        peak_gpu_memory_mib=max(r.peak_gpu_memory_mib or 0.0 for r in reports),
        checkpoint_save_s=sum(r.phases["checkpoint"] for r in reports) / len(reports),
        checkpoint_restore_s=restore, eval_loss=reports[-1].eval_loss, optimizer_lr=reports[-1].optimizer_lr,
        wall_s=wall,
    )


def check(shape: Shape, work: Path) -> tuple[list[Figures], list[str]]:
    """The three runs; returns their figures and the problems found (empty: passed)."""
    import torch

    gpu = torch.cuda.is_available()
    model = build_model(shape, work / "model")
    data = build_data(shape, work / "data.pt", load_tokenizer(str(model)).pad_token_id)
    hparams = HParams(lr=LR, per_device_train_batch_size=shape.batch_size, weight_decay=0.0)
    figures, problems, kept = [], [], {}
    for name, deepspeed in (("fp16" if gpu else "fp32", False), ("deepspeed-zero2", True)):
        keep = Keep(work / f"keep-{name}")
        keep.folder.mkdir()
        (work / f"work-{name}").mkdir()
        seg = Segment(cfg=experiment(shape, gpu=gpu, deepspeed=deepspeed), hparams=hparams,
                      model_path=str(model), data_path=str(data), trial_id=name, workdir=str(work / f"work-{name}"),
                      cache_dir=str(work / "extensions"))
        started = time.time()
        run_trial_segment(seg, keep)
        figures.append(_figures(name, shape, keep.reports, time.time() - started))
        kept[name] = keep
        if deepspeed and not all(r.deepspeed for r in keep.reports):
            problems.append(f"{name}: the Trainer did not run under DeepSpeed")
    donor = next(iter(kept))
    keep = Keep(work / "keep-exploit")
    keep.folder.mkdir()
    (work / "work-exploit").mkdir()
    seg = Segment(cfg=experiment(shape, gpu=gpu, deepspeed=False), hparams=dataclasses.replace(hparams, lr=EXPLOIT_LR),
                  model_path=str(model), data_path=str(data), trial_id="exploit", workdir=str(work / "work-exploit"),
                  start_iteration=1, init_weights=str(kept[donor].folder / "iter1" / MODEL_DIR),
                  exploited_from=donor, epochs_before=1.0)
    started = time.time()
    run_segment(seg, keep)
    (report,) = keep.reports
    figures.append(_figures(f"exploit from {donor} (lr {LR:g} -> {EXPLOIT_LR:g})", shape, keep.reports,
                            time.time() - started, restore=report.phases["model_load"]))
    if abs(report.optimizer_lr - EXPLOIT_LR) > 1e-12:
        problems.append(f"after the exploit the optimizer's lr is {report.optimizer_lr:g}, not {EXPLOIT_LR:g}")
    if report.iteration != 2 or report.exploited_from != donor:
        problems.append(f"the exploit trained iteration {report.iteration} from {report.exploited_from!r}")
    return figures, problems


def table(figures: list[Figures]) -> str:
    rows = ["| run | iterations | samples/s | tokens/s | peak GPU memory (MiB) | checkpoint save (s) | "
            "restore (s) | eval_loss | optimizer lr | wall (s) |", "|---|" + "---:|" * 9]
    for f in figures:
        rows.append(f"| {f.run} | {f.iterations} | {f.samples_per_s:.1f} | {f.tokens_per_s:,.0f} | "
                    f"{f.peak_gpu_memory_mib:,.0f} | {f.checkpoint_save_s:.2f} | "
                    f"{f'{f.checkpoint_restore_s:.2f}' if f.checkpoint_restore_s else '-'} | "
                    f"{f.eval_loss:.3f} | {f.optimizer_lr:g} | {f.wall_s:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.trial.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes; runs on CPU (the tests)")
    parser.add_argument("--out", default="results/gpu-check", help="folder for gpu-check.json and .md")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; make gpu-check needs one (python -m harness.trial.gpucheck --dry-run runs "
              "the same check at tiny shapes on CPU)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    shape = DRY if args.dry_run else SEED
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        figures, problems = check(shape, Path(tmp))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    head = (f"gpu-check on {device}: BLOOM {shape.hidden_size}x{shape.n_layer} (vocab {shape.vocab_size}), "
            f"{shape.train_samples} samples x {shape.length} tokens, batch {shape.batch_size}, "
            f"{shape.iterations} iterations; torch {torch.__version__}; {time.time() - started:.0f} s in all")
    text = f"{head}\n\n{table(figures)}\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.md").write_text(text)
    (out / "gpu-check.json").write_text(json.dumps({"header": head, "shape": asdict(shape), "problems": problems,
                                                    "runs": [asdict(f) for f in figures]}, indent=2))
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
