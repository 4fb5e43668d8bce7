"""The offline cache's layout: where ``make prepare`` puts each thing, and where runs look first.

One folder (``HARNESS_CACHE``, by default ``<results>/.cache``) holds, for every model and data
source a preset names, its own slot; a slot counts only once it is complete (a download cut off
halfway is never read). Light to import: the pre-flight asks it before anything heavy starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

from harness.config import ExperimentConfig, resolve

#: The model built offline (harness.trial.model), never fetched.
TINY_BLOOM = "tiny-bloom"
WEIGHT_FILES = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SPLITS = ("train", "validation")


def root(results_dir: str | Path) -> Path:
    """The cache a run reads: ``HARNESS_CACHE``, else ``<results_dir>/.cache``."""
    return Path(os.environ.get("HARNESS_CACHE") or Path(results_dir) / ".cache").resolve()


def slug(name: str) -> str:
    """A folder name for a hub id, a local path or a file: readable, and unique by a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/"))[-60:].strip("-.") or "x"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def model_slot(cache: Path, name: str) -> Path:
    return Path(cache) / "models" / slug(name)


def dataset_slot(cache: Path, source: str) -> Path:
    return Path(cache) / "datasets" / slug(source)


def model_complete(folder: Path) -> bool:
    return ((folder / "config.json").is_file() and any(folder.glob(p) for p in WEIGHT_FILES)
            and any((folder / f).is_file() for f in TOKENIZER_FILES))


def dataset_complete(folder: Path) -> bool:
    return (folder / "squad.json").is_file() or all((folder / f"{s}.jsonl").is_file() for s in SPLITS)


#: What decides the cache's contents: a run whose values differ here needs its own ``make prepare``.
CACHED_SECTIONS = ("model", "data")


def prepare_command(cfg: ExperimentConfig) -> str:
    """The exact ``make prepare`` that fills the cache for ``cfg``: its preset, its cache, and the
    seed and model/data settings in which it differs from the preset (they change what is cached)."""
    preset = resolve(cfg.preset, env={})
    flags = [f"--seed={cfg.seed}"] if cfg.seed != preset.seed else []
    mine, theirs = cfg.flat(), preset.flat()
    flags += [f"--set={key}={_text(mine[key])}" for key in mine
              if key.partition(".")[0] in CACHED_SECTIONS and mine[key] != theirs[key]]
    cmd = f"make prepare PRESET={shlex.quote(cfg.preset)} CACHE_DIR={shlex.quote(str(root(cfg.results_dir)))}"
    return cmd + (" HARNESS_ARGS=" + shlex.quote(shlex.join(flags)) if flags else "")


def _text(value: object) -> str:
    """A value as ``--set`` takes it back."""
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def missing(cfg: ExperimentConfig) -> list[str]:
    """What ``cfg`` would fetch from the hub and the cache does not hold: runs read the hub only
    through ``make prepare``, which checks what it fetched (a compute node has no network, and a run
    that downloads on whichever node it lands on fails late and far from the cause)."""
    cache = root(cfg.results_dir)
    out = []
    name = cfg.model.name
    if name != TINY_BLOOM and not Path(name).is_dir() and not model_complete(model_slot(cache, name)):
        out.append(f"model {name!r}")
    source = cfg.data.source
    hub_name = source.removeprefix("hub:")
    if source.startswith("hub:") and not Path(hub_name).is_dir() and not dataset_complete(dataset_slot(cache, source)):
        out.append(f"dataset {source!r}")
    return out
