"""Where a run came from: git state, package versions, host and device."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
    return f"cpu ({os.cpu_count()} cores)"


def code_source() -> dict[str, str]:
    """Which code ran: ``image`` (the harness installed in an Apptainer image), ``bind`` (the
    checkout bound into the image), ``venv`` (a SLURM job with HARNESS_SIF=none) or ``checkout``
    (run by hand), with the image and the GIT_SHA label it was built with."""
    import harness

    info = {"code": os.environ.get("HARNESS_CODE", "checkout"),
            "code_path": str(Path(harness.__file__).resolve().parent)}
    image = os.environ.get("HARNESS_IMAGE", "")
    if image and image != "none":
        info["image"] = image
        labels = Path(os.environ.get("HARNESS_IMAGE_LABELS", "/.singularity.d/labels.json"))
        try:
            info["image_git_sha"] = json.loads(labels.read_text()).get("harness.git_sha", "unknown")
        except (OSError, ValueError):
            info["image_git_sha"] = "unknown"
    return info


def provenance() -> dict[str, str]:
    info = {"host": socket.gethostname(), "python": platform.python_version(), "device": device()}
    info.update(code_source())
    info.update(git_state())
    info.update({f"version.{k}": v for k, v in package_versions().items()})
    return info
