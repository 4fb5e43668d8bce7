"""Shared fixtures. No test reaches the network: the HF libraries run offline, and any
non-loopback connection attempt from the test process fails loudly."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SQUAD_SAMPLE = ROOT.parent / "shared" / "data" / "squad-v2-dev-sample.json"

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
                  TOKENIZERS_PARALLELISM="false")

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            raise AssertionError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture(scope="session")
def smoke_cfg():
    from harness.config import resolve

    return resolve("smoke", env={})


@pytest.fixture(scope="session")
def tiny_model_path(smoke_cfg, cache_dir: Path) -> str:
    from harness.model import resolve_model_path

    return resolve_model_path(smoke_cfg.model, seed=smoke_cfg.seed, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path: str):
    from harness.model import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="session")
def squad_sample() -> Path:
    if not SQUAD_SAMPLE.is_file():
        pytest.skip(f"shared SQuAD sample not found at {SQUAD_SAMPLE} (CI places ../shared beside the checkout)")
    return SQUAD_SAMPLE
