"""The offline cache: fill it once where there is network, check it before a job starts.

Compute nodes usually have no network, and a trial that reaches for the hub on whichever node it
lands on fails late and far from the cause. ``python -m harness prepare`` (``make prepare``) runs
once on a login node and puts everything a run reads into one folder (``HARNESS_CACHE``, by
default ``<results>/.cache``)::

    models/<slug>/      the model and its tokenizer, saved as an ordinary model folder
    datasets/<slug>/    the raw records of every split (a hub dataset's JSONL, or the SQuAD file)
    data/squad-<key>.pt the tokenized splits for this config (the same file runs read)
    prepared/<slug>.json what was prepared, with sizes and a fingerprint

It then loads everything again with the hub switched off, which is the check a job repeats
(``python -m harness prepare --check``) before it starts Ray: an incomplete cache exits 2 with
the exact ``make prepare`` command that completes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging as hf_logging

from harness.cluster.devices import cuda_devices
from harness.config import ConfigError, ExperimentConfig
from harness.trial.cache import (
    dataset_complete,
    dataset_slot,
    model_complete,
    model_slot,
    prepare_command,
    root,
    slug,
)
from harness.trial.data import SPLITS, cached_tokenized, load_hub, read_squad_json
from harness.trial.data import prepare as tokenize_into
from harness.trial.model import (
    TINY_BLOOM,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

log = logging.getLogger(__name__)

class CacheIncomplete(ConfigError):
    """The cache lacks something a run reads; the message names it and the command that fills it."""


def _publish(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` in one rename, so a reader never sees half a folder."""
    old = target.with_name(f"{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def fetch_model(name: str, cache: Path) -> Path:
    """Download (or copy, for a local folder) the model and tokenizer into ``models/<slug>``.

    ``from_pretrained`` downloads into a scratch folder inside the cache; ``save_pretrained``
    writes the ordinary model folder every trial then loads, with no hub and no HF cache."""
    target = model_slot(cache, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        tokenizer = load_tokenizer(name, cache_dir=scratch)
        weights = load_model(name, cache_dir=scratch, dtype="auto")
        tmp = Path(scratch) / "out"
        weights.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, target)
    return target


def fetch_dataset(source: str, cache: Path) -> Path | None:
    """The raw records of ``source`` into ``datasets/<slug>``: every split of a hub dataset as
    JSONL, a SQuAD JSON file as a copy. ``synthetic`` needs nothing (None)."""
    if source == "synthetic":
        return None
    target = dataset_slot(cache, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        tmp = Path(scratch) / "out"
        tmp.mkdir()
        if source.startswith("hub:"):
            for split in SPLITS:
                with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as out:
                    for record in load_hub(source.removeprefix("hub:"), split, cache_dir=str(Path(scratch) / "hf")):
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            read_squad_json(source)  # refuses a file that is not SQuAD before it is cached
            shutil.copyfile(source, tmp / "squad.json")
        (tmp / "SOURCE").write_text(source + "\n")
        _publish(tmp, target)
    return target


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over every file's relative name and content, in a fixed order: two caches with the
    same fingerprint give runs the same bytes."""
    digest = hashlib.sha256()
    for top in paths:
        files = sorted(f for f in top.rglob("*") if f.is_file()) if top.is_dir() else [top]
        for f in files:
            digest.update(f"{f.relative_to(top) if top.is_dir() else f.name}\0".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class Prepared:
    cache: Path
    model: Path
    dataset: Path | None
    tokenized: Path
    fingerprint: str

    def lines(self) -> list[str]:
        def mib(p: Path) -> str:
            return f"{_size(p) / 2**20:,.1f} MiB"

        out = [f"model      {self.model} ({mib(self.model)})"]
        if self.dataset is not None:
            out.append(f"dataset    {self.dataset} ({mib(self.dataset)})")
        out.append(f"tokenized  {self.tokenized} ({mib(self.tokenized)})")
        out.append(f"fingerprint {self.fingerprint}")
        return out


def _offline_env() -> dict[str, str | None]:
    """Switch the hub off in this process (for the verification) and return what to restore."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    return saved


def verify(cfg: ExperimentConfig) -> Prepared:
    """Load everything a run reads from the cache alone, with the hub off; CacheIncomplete names
    the first missing piece and the ``make prepare`` that fills it."""
    hf_logging.disable_progress_bar()  # a "Loading weights" bar in the SLURM head job's log
    cache = root(cfg.results_dir)
    fix = prepare_command(cfg)
    cuda_devices()

    def missing(what: str) -> CacheIncomplete:
        return CacheIncomplete(f"the cache {cache} has no {what}; fill it where there is network: {fix}")

    saved = _offline_env()
    try:
        if cfg.model.name == TINY_BLOOM:
            model = Path(resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache, build=False) or "")
            if not model_complete(model):
                raise missing(f"tiny-bloom model for seed {cfg.seed}")
        else:
            model = model_slot(cache, cfg.model.name)
            if not model_complete(model):
                raise missing(f"model {cfg.model.name!r} (expected {model})")
        dataset = None
        if cfg.data.source != "synthetic":
            dataset = dataset_slot(cache, cfg.data.source)
            if not dataset_complete(dataset):
                raise missing(f"dataset {cfg.data.source!r} (expected {dataset})")
        tokenizer = load_tokenizer(str(model))
        tokenized = cached_tokenized(cfg.data, tokenizer, seed=cfg.seed, max_length=cfg.model.max_length,
                                     cache_dir=cache)
        if not tokenized.is_file():
            raise missing(f"tokenized data for this config (expected {tokenized})")
        load_model(str(model))  # the weights load, not just exist
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    parts = [model, tokenized] + ([dataset] if dataset else [])
    return Prepared(cache=cache, model=model, dataset=dataset, tokenized=tokenized, fingerprint=fingerprint(parts))


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Fetch model, tokenizer and dataset into the cache, tokenize once, then :func:`verify`."""
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load
    cuda_devices()
    cache = root(cfg.results_dir)
    if cfg.model.name == TINY_BLOOM:
        model = Path(resolve_model_path(cfg.model, seed=cfg.seed, cache_dir=cache))
    else:
        log.info("fetching model %s", cfg.model.name)
        model = fetch_model(cfg.model.name, cache)
    log.info("fetching dataset %s", cfg.data.source)
    fetch_dataset(cfg.data.source, cache)
    tokenize_into(cfg.data, load_tokenizer(str(model)), seed=cfg.seed, max_length=cfg.model.max_length,
                  cache_dir=cache)
    prepared = verify(cfg)
    manifest = cache / "prepared" / f"{slug(cfg.model.name + '|' + cfg.data.source)}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "model.name": cfg.model.name, "data.source": cfg.data.source, "seed": cfg.seed,
        "model": str(prepared.model), "dataset": str(prepared.dataset) if prepared.dataset else None,
        "tokenized": str(prepared.tokenized), "fingerprint": prepared.fingerprint,
    }, indent=2) + "\n")
    return prepared
