"""Shared fixtures. No test reaches the network: the HF libraries run offline, and any
non-loopback connection attempt from the test process fails loudly."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.soak import MlflowServer

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


#: Test files that share a session fixture run on one pytest-xdist worker (make test: -n 2 --dist
#: loadgroup), so that fixture is built once: the smoke PBT run, DeepSpeed's CPU op. Every other
#: file is a group of its own (a module-scoped SLURM cluster must not start twice).
SHARED_GROUPS = {"test_integration": "smoke-runs", "test_compare_integration": "smoke-runs",
                 "test_train": "deepspeed", "test_gpucheck": "deepspeed"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:  # a test may name its own
            stem = Path(str(item.fspath)).stem
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(stem, stem)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


def _refuse(what: str):  # type: ignore[no-untyped-def]
    def refused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError(f"a unit test called {what}: move it to the fast tier, or mark it integration")

    return refused


@pytest.fixture(autouse=True)
def unit_tests_start_no_ray_and_train_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier (make test-unit) stays fast by construction: in a test marked unit, starting
    Ray or training a model fails the test instead of slowing the tier down."""
    if request.node.get_closest_marker("unit") is None:
        return
    import ray

    monkeypatch.setattr(ray, "init", _refuse("ray.init"))
    trainer = sys.modules.get("transformers.trainer")
    if trainer is not None:  # not imported: nothing can train (importing it costs seconds)
        monkeypatch.setattr(trainer.Trainer, "train", _refuse("Trainer.train"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture(scope="session")
def torch_extensions(cache_dir: Path) -> Path:
    """DeepSpeed's CPU shared-memory op, built once here in one process. A rank that JIT-builds it
    while its peer waits was seen to abort (SIGABRT) once in five fresh-clone runs; every rank now
    finds it built (``TORCH_EXTENSIONS_DIR``, inherited, wins over a segment's own cache dir)."""
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make venv`")
    folder = cache_dir / "torch_extensions"
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    ShareMemCommBuilder().load(verbose=False)
    return folder


@pytest.fixture(scope="session")
def smoke_cfg():
    from harness.config import resolve

    return resolve("smoke", env={})


@pytest.fixture(scope="session")
def tiny_model_path(smoke_cfg, cache_dir: Path) -> str:
    from harness.trial.model import resolve_model_path

    return resolve_model_path(smoke_cfg.model, seed=smoke_cfg.seed, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path: str):
    from harness.trial.model import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="session")
def squad_sample() -> Path:
    if not SQUAD_SAMPLE.is_file():
        pytest.skip(f"shared SQuAD sample not found at {SQUAD_SAMPLE} (CI places ../shared beside the checkout)")
    return SQUAD_SAMPLE


#: A third of the smoke budget: the grid's 4 combinations (1 lr x 2 bs x 2 wd), a PBT population of 4,
#: on 2 slots: a population larger than the slots (what the warm processes are for), and two trial
#: processes to start instead of four on a 2-core machine.
SMALL_BUDGET = ("--set", "budget.trial_iterations=12", "--set", "budget.slots=2")


def run_harness(results: Path, *args: str, command: str = "run", timeout: int = 900):
    """The real CLI in a subprocess, offline, with a private local Ray and sqlite MLflow."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    extra = ["--results-dir", str(results)] if command == "run" else []
    return subprocess.run([sys.executable, "-m", "harness", command, *extra, *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def only_run_dir(results: Path) -> Path:
    (run_dir,) = [p for p in results.iterdir() if p.is_dir() and (p / "run_record.json").is_file()]
    return run_dir


@pytest.fixture(scope="session")
def smoke_pbt(tmp_path_factory):
    """`make bench-pbt`'s run (smoke preset) on a third of its budget (12 trial-iterations: a
    population of 4), shared by the end-to-end and comparison tests."""
    from harness.contract.rundir import RunDir

    results = tmp_path_factory.mktemp("smoke-pbt")
    done = run_harness(results, "--strategy", "pbt", "--preset", "smoke", *SMALL_BUDGET)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    run_dir = only_run_dir(results)
    return done, results, run_dir, RunDir(run_dir).record()


@contextlib.contextmanager
def serve_mlflow(store: Path, port: int = 0) -> Iterator[int]:
    """A real `mlflow server` on 127.0.0.1 over the sqlite ``store`` (on ``port``, or a free one); yields its port."""
    server = MlflowServer(store, port=port)
    try:
        server.start()
        yield server.port
    finally:
        server.kill(signal.SIGTERM)
