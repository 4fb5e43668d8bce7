from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from harness.config import ModelConfig
from harness.trial.model import ModelError, load_model, load_tokenizer, resolve_model_path


def test_tiny_bloom_is_cached_and_loads_like_a_hub_model(tiny_model_path, cache_dir, smoke_cfg):
    path = Path(tiny_model_path)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    mtime = (path / "config.json").stat().st_mtime
    assert resolve_model_path(smoke_cfg.model, seed=smoke_cfg.seed, cache_dir=cache_dir) == tiny_model_path
    assert (path / "config.json").stat().st_mtime == mtime, "the second call must reuse the cache"
    model = load_model(tiny_model_path)
    tok = load_tokenizer(tiny_model_path)
    assert type(model).__name__ == "BloomForCausalLM"
    assert isinstance(tok, PreTrainedTokenizerFast) and tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    assert model.config.vocab_size == len(tok) == smoke_cfg.model.tiny_vocab_size
    # byte-level BPE covers any text, real SQuAD included
    text = "Zürich, 1066 — Normans!"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tiny_bloom_init_is_seeded(tmp_path):
    cfg = ModelConfig(tiny_vocab_size=300, tiny_hidden_size=16, tiny_layers=1, tiny_heads=2)
    a = load_model(resolve_model_path(cfg, seed=1, cache_dir=tmp_path / "a"))
    b = load_model(resolve_model_path(cfg, seed=1, cache_dir=tmp_path / "b"))
    c = load_model(resolve_model_path(cfg, seed=2, cache_dir=tmp_path / "c"))
    wa, wb, wc = (m.transformer.h[0].mlp.dense_h_to_4h.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def _fake_hub_cache(root: Path, repo: str, model_dir: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/...}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    entry = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(model_dir, entry / "snapshots" / sha)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(sha)


def test_hub_id_loads_from_the_offline_cache(tiny_model_path, tmp_path):
    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "harness-test/tiny-bloom", tiny_model_path)
    code = (
        "from harness.trial.model import load_model, load_tokenizer;"
        "m = load_model('harness-test/tiny-bloom'); t = load_tokenizer('harness-test/tiny-bloom');"
        "print(type(m).__name__, len(t))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["BloomForCausalLM", "2000"]


def test_missing_model_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"model.name='bigscience/no-such-model'.*HF_HUB_OFFLINE=1"):
        load_model("bigscience/no-such-model")
