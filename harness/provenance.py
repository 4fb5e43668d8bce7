"""Where a run came from: git state, package versions, host and device."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "ray", "mlflow", "datasets", "accelerate", "tokenizers", "deepspeed")


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {"git_sha": sha or "unknown", "git_dirty": str(bool(git("status", "--porcelain"))).lower() if sha else "unknown"}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    import os

    return f"cpu ({os.cpu_count()} cores)"


def provenance() -> dict[str, str]:
    info = {"host": socket.gethostname(), "python": platform.python_version(), "device": device()}
    info.update(git_state())
    info.update({f"version.{k}": v for k, v in package_versions().items()})
    return info
