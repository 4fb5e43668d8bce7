"""Model and tokenizer factories.

Two kinds of model name:

* ``tiny-bloom``: a ``BloomForCausalLM`` from a small ``BloomConfig`` with a seeded random init and
  a byte-level BPE tokenizer trained locally with ``tokenizers``, wrapped as a
  ``PreTrainedTokenizerFast``. It is built once and saved as an ordinary model folder in the cache,
  so every trial loads it exactly as it would load a hub model. Nothing touches the network.
* anything else: a hub id (``bigscience/bloom-560m``) or a local model folder, loaded with
  ``from_pretrained``; once ``make prepare`` has saved it into the harness cache
  (``harness.trial.prepare``), runs load that folder and never reach the hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ModelConfig
from harness.trial.cache import TINY_BLOOM, model_complete, model_slot
from harness.trial.data import format_prompt, synthetic_squad

log = logging.getLogger(__name__)

TINY_VERSION = 1
PAD, EOS, BOS, UNK = "<pad>", "</s>", "<s>", "<unk>"


class ModelError(ConfigError):
    """The model cannot be loaded; the message names it and the fix."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _tiny_corpus(seed: int, n: int = 4000) -> list[str]:
    stream = synthetic_squad(seed, "tokenizer")
    texts = []
    for _ in range(n):
        record = next(stream)
        texts.append(f"{format_prompt(record)} {record['answers']['text'][0]}")
    # A little general English so real SQuAD text does not fall apart into single bytes.
    texts += [
        "The quick brown fox jumps over the lazy dog. What, when, where, which, who, why and how?",
        "In the year 1066 the Normans, a people from Normandy in France, conquered England.",
        "Computational complexity theory classifies problems by the resources they need.",
    ] * 20
    return texts


def train_tiny_tokenizer(vocab_size: int, seed: int) -> Any:
    """Byte-level BPE trained on the synthetic corpus; covers every byte, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK
    )


def tiny_fingerprint(cfg: ModelConfig, seed: int) -> str:
    payload = json.dumps(
        {
            "vocab": cfg.tiny_vocab_size,
            "hidden": cfg.tiny_hidden_size,
            "layers": cfg.tiny_layers,
            "heads": cfg.tiny_heads,
            "seed": seed,
            "version": TINY_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_tiny_bloom(cfg: ModelConfig, seed: int, out_dir: str | Path) -> Path:
    """Write a tiny BLOOM (weights + config + tokenizer) to ``out_dir``; deterministic in ``seed``."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer(cfg.tiny_vocab_size, seed)
    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden_size,
        n_layer=cfg.tiny_layers,
        n_head=cfg.tiny_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = BloomForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for a one-shard tiny model
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def resolve_model_path(cfg: ModelConfig, *, seed: int, cache_dir: str | Path, build: bool = True) -> str:
    """What ``from_pretrained`` should load: the cached tiny-bloom folder (built here unless
    ``build`` is False), the folder ``make prepare`` saved for ``cfg.name``, or ``cfg.name`` itself."""
    if cfg.name != TINY_BLOOM:
        prepared = model_slot(Path(cache_dir), cfg.name)
        return str(prepared) if model_complete(prepared) else cfg.name
    target = Path(cache_dir) / "models" / f"tiny-bloom-{tiny_fingerprint(cfg, seed)}"
    if (target / "config.json").is_file() or not build:
        return str(target)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_bloom(cfg, seed, tmp)
    try:
        os.replace(tmp, target)  # atomic publish; a concurrent builder's copy is just as good
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny-bloom ready at %s", target)
    return str(target)


def _from_pretrained(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    offline = hub_offline()
    try:
        return loader.from_pretrained(name, local_files_only=offline, **kwargs)
    except OSError as exc:
        hint = (
            "it is not in the prepared cache and HF_HUB_OFFLINE=1; run `make prepare` where there is "
            "network (a login node), or point model.name at a local folder"
            if offline
            else "check the name, your network, or point model.name at a local folder"
        )
        raise ModelError(f"model.name={name!r}: cannot load the {what} ({str(exc).splitlines()[0]}); {hint}") from None


def load_tokenizer(name_or_path: str, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, "tokenizer", **kwargs)
    if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with EOS, labels mask it anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, name_or_path, "model", **kwargs)
