from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tools import container
from tools.container import lint, lock_drift, lock_from_constraints

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DEF = ROOT / "container" / "harness.def"


def _tool(*args: str) -> subprocess.CompletedProcess:
    """The dev tool as `make container-lint` / `make lock` run it."""
    return subprocess.run([sys.executable, "tools/container.py", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_the_definition_passes_the_linter_and_spython():
    assert lint(DEF.read_text()) == []
    assert container.spython_check(DEF) == []
    done = _tool("lint", str(DEF))
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize(
    "old, new, needle, message",
    [
        ("%post", "%psot", "%psot", "unknown section %psot"),
        ("@sha256:50efab398f76258daa91ceebb33b6467e40217c67ea44fb5a2cebc6be7d9cce3", "", "From:",
         "is not pinned by digest"),
        ("/opt/venv/bin/pip install --no-deps --no-build-isolation /opt/harness/src",
         "/opt/venv/bin/pip install --no-deps --no-build-isolation /opt/harness/src && pip install requests",
         "&& pip install requests", "pip install requests: unpinned"),
        ("-r /opt/harness/requirements.lock", "-r /tmp/other.txt", "-r /tmp/other.txt",
         "install requirements only from the lock"),
        ("-c /opt/harness/requirements.lock torch", "torch", "download.pytorch.org", "pip install torch: unpinned"),
        ("--no-deps --no-build-isolation /opt/harness/src", "/opt/harness/src", "pip install /opt/harness/src",
         "must be installed with --no-deps"),
    ],
)
def test_each_mutation_fails_with_its_line_number(tmp_path, old, new, needle, message):
    text = DEF.read_text()
    assert old in text
    mutated = text.replace(old, new, 1)
    findings = lint(mutated)
    assert findings, f"{message!r} was not detected"
    expected_line = _line_of(mutated, needle)
    assert any(f.line == expected_line and message in f.message for f in findings), findings
    bad = tmp_path / "bad.def"
    bad.write_text(mutated)
    done = _tool("lint", str(bad))
    assert done.returncode == 1 and f"bad.def:line {expected_line}: " in done.stdout, done.stdout


def test_missing_bootstrap_and_from_are_reported():
    text = DEF.read_text().replace("Bootstrap: docker\n", "", 1)
    assert any("missing 'Bootstrap:'" in f.message for f in lint(text))
    text = "\n".join(line for line in DEF.read_text().splitlines() if not line.startswith("From:"))
    assert any("missing 'From:'" in f.message for f in lint(text))


def test_a_pin_that_disagrees_with_the_lock_and_a_missing_files_source():
    text = DEF.read_text().replace("-c /opt/harness/requirements.lock torch",
                                   "-c /opt/harness/requirements.lock torch==2.12.0", 1)
    assert any("the lock pins torch==2.13.0+cu126" in f.message for f in lint(text))
    text = DEF.read_text().replace("pyproject.toml /opt", "pyproject.tom /opt", 1)
    assert any("%files source pyproject.tom does not exist" in f.message for f in lint(text))


def test_spython_alone_would_miss_a_misspelled_section(tmp_path):
    bad = tmp_path / "bad.def"
    bad.write_text(DEF.read_text().replace("%post", "%psot", 1))
    assert container.spython_check(bad) == [], "spython is lenient; if this starts failing, it got stricter"
    assert lint(bad.read_text())


def test_the_committed_lock_is_generated_from_constraints_and_agrees():
    constraints = container.CONSTRAINTS.read_text()
    assert container.LOCK.read_text() == lock_from_constraints(constraints), "run `make lock`"
    assert lock_drift(constraints, container.LOCK.read_text()) == []
    pins = container.read_pins(container.LOCK.read_text())
    assert pins["torch"] == "2.13.0+cu126" and "pytest" not in pins and pins["deepspeed"]


def test_a_version_changed_in_only_one_place_is_drift():
    constraints, lock = container.CONSTRAINTS.read_text(), container.LOCK.read_text()
    changed = lock.replace("ray==2.60.0", "ray==2.59.0")
    assert lock_drift(constraints, changed) == ["ray: constraints.txt pins 2.60.0, the container lock pins 2.59.0"]
    changed = constraints.replace("transformers==5.24.0", "transformers==5.25.0")
    assert lock_drift(changed, lock) == [
        "transformers: constraints.txt pins 5.25.0, the container lock pins 5.24.0"]
    assert lock_drift(constraints, lock.replace("torch==2.13.0+cu126", "torch==2.12.0+cu126"))
    assert lock_drift(constraints, lock.replace("\nmlflow==", "\n# mlflow==")) == [
        "mlflow==3.17.2 is in constraints.txt but not in the container lock"]
    done = _tool("lock", "--check")
    assert done.returncode == 0, done.stdout


def test_make_container_without_apptainer_says_so_in_one_line(tmp_path):
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(["make", "-s", "container", f"PY={sys.executable}"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2
    first = done.stderr.strip().splitlines()[0]  # make adds its own "*** Error 2" line after it
    assert first.startswith("error: apptainer is not installed") and "apptainer build" in first


def test_make_container_runs_apptainer_build_with_the_git_sha(tmp_path):
    fake = tmp_path / "apptainer"
    log = tmp_path / "args.txt"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["make", "-s", "container", f"PY={sys.executable}", f"SIF={tmp_path}/h.sif"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert args[0] == "build" and f"{tmp_path}/h.sif" in args and "container/harness.def" in args
    assert "--build-arg" in args and any(a.startswith("GIT_SHA=") for a in args)
