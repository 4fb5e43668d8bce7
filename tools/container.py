"""The Apptainer definition: a linter for it, and the lock it installs.

No Apptainer runtime can be installed on the machines this project is developed and tested on,
so the definition is checked here by a linter of our own — known section names only, ``Bootstrap``
and ``From`` present, the base image pinned by digest, every ``pip install`` fed from the lock —
with a line number in every message; ``spython`` parses it as well, but it is lenient (a misspelled
section becomes a comment) and cannot be the only check.

The container's lock (``container/requirements.lock``) is generated from ``constraints.txt`` (the
virtual environment's pins), so both install the same versions; :func:`lock_drift` reports any
package whose version differs (torch may differ only in its local build label, ``+cpu``/``+cu126``).
"""

from __future__ import annotations

import argparse
import re
import sys
import shlex
from dataclasses import dataclass
from pathlib import Path


#: The checkout this tool lives in (tools/ sits at its root).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFINITION = PROJECT_ROOT / "container" / "harness.def"
LOCK = PROJECT_ROOT / "container" / "requirements.lock"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
#: Where %files puts the lock inside the image; pip installs must read it from there.
LOCK_IN_IMAGE = "/opt/harness/requirements.lock"
#: The torch build the image installs (CUDA 12.6 still covers V100 as well as H100/H200).
TORCH_LOCAL_LABEL = "cu126"
#: Only the tests and the dev tools (this linter's spython) need these; the image does not carry them.
TEST_ONLY = {"pytest", "pytest-benchmark", "pytest-xdist", "execnet", "iniconfig", "pluggy", "py-cpuinfo2", "playwright",
             "greenlet", "spython"}

SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help",
            "arguments"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)$")


@dataclass(frozen=True)
class Finding:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


# --------------------------------------------------------------------------- lock

def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (comments and options skipped)."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = match.group(3)
    return pins


def lock_from_constraints(constraints: str) -> str:
    """The container lock: the constraints' pins minus test tools, torch as its CUDA build."""
    lines = [
        "# GENERATED from constraints.txt by `make lock` (python -m harness container lock): do not edit.",
        "# Installed by container/harness.def; tests/test_container.py fails when it drifts.",
        f"# torch is the CUDA 12.6 build from https://download.pytorch.org/whl/{TORCH_LOCAL_LABEL}.",
    ]
    for name, version in sorted(read_pins(constraints).items()):
        if name in TEST_ONLY:
            continue
        if name == "torch":
            version = f"{version.split('+')[0]}+{TORCH_LOCAL_LABEL}"
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def lock_drift(constraints: str, lock: str) -> list[str]:
    """Every disagreement between the two files, one line each; empty when they agree."""
    want, have = read_pins(constraints), read_pins(lock)
    problems = []
    for name in sorted(set(want) | set(have)):
        if name in TEST_ONLY:
            continue
        a, b = want.get(name), have.get(name)
        if a is None:
            problems.append(f"{name}=={b} is in the container lock but not in constraints.txt")
        elif b is None:
            problems.append(f"{name}=={a} is in constraints.txt but not in the container lock")
        elif a.split("+")[0] != b.split("+")[0] or (name != "torch" and a != b):
            problems.append(f"{name}: constraints.txt pins {a}, the container lock pins {b}")
    return problems


# --------------------------------------------------------------------------- linter

def _logical_lines(body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join backslash continuations; each command keeps the line number it starts on."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, text in body:
        stripped = text.strip()
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _pip_commands(command: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a shell line (``a && pip install x; ...``)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    commands, current = [], []
    for word in words + [";"]:
        if word in {"&&", "||", ";", "|"} or word.endswith(";"):
            if word.endswith(";") and word != ";":
                current.append(word[:-1])
            commands.append(current)
            current = []
        else:
            current.append(word)
    found = []
    for cmd in commands:
        for i, word in enumerate(cmd):
            if Path(word).name in {"pip", "pip3"} or (word == "-m" and cmd[i + 1:i + 2] == ["pip"]):
                j = i + 1 if word != "-m" else i + 2
                if cmd[j:j + 1] == ["install"]:
                    found.append(cmd[j + 1:])
                break
    return found


_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                  "-f", "--find-links", "--target", "-t", "--prefix", "--root", "--platform",
                  "--python-version", "--implementation", "--abi", "--no-binary", "--only-binary", "--progress-bar"}


def _check_pip(args: list[str], lock_pins: dict[str, str], line: int) -> list[Finding]:
    findings = []
    from_lock = False
    constrained = False
    no_deps = "--no-deps" in args
    packages = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_OPTIONS:
            value = args[i + 1] if i + 1 < len(args) else ""
            if arg in {"-r", "--requirement"}:
                if value != LOCK_IN_IMAGE:
                    findings.append(Finding(line, f"pip install -r {value}: install requirements only from the lock "
                                                  f"{LOCK_IN_IMAGE}"))
                from_lock = True
            if arg in {"-c", "--constraint"} and value == LOCK_IN_IMAGE:
                constrained = True
            i += 2
            continue
        if "=" in arg and arg.split("=", 1)[0] in _VALUE_OPTIONS:
            opt, value = arg.split("=", 1)
            if opt in {"-r", "--requirement"}:
                from_lock = value == LOCK_IN_IMAGE
            if opt in {"-c", "--constraint"} and value == LOCK_IN_IMAGE:
                constrained = True
        elif not arg.startswith("-"):
            packages.append(arg)
        i += 1
    for spec in packages:
        if spec.startswith(("/", "./", "../")):
            if not no_deps:
                findings.append(Finding(line, f"pip install {spec}: a local package must be installed with --no-deps "
                                              "so it cannot pull unpinned dependencies"))
            continue
        match = PIN.match(spec)
        name = normalize(re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0])
        if match:
            locked = lock_pins.get(name)
            if locked is not None and locked != match.group(3):
                findings.append(Finding(line, f"pip install {spec}: the lock pins {name}=={locked}"))
            elif locked is None:
                findings.append(Finding(line, f"pip install {spec}: {name} is not in the lock; add it to constraints.txt "
                                              "and run make lock"))
        elif constrained and name in lock_pins and re.fullmatch(r"[A-Za-z0-9._-]+", spec):
            continue  # version comes from the lock through -c
        else:
            findings.append(Finding(line, f"pip install {spec}: unpinned; install from the lock "
                                          f"(-r {LOCK_IN_IMAGE}, or -c {LOCK_IN_IMAGE} with a locked name)"))
    if not packages and not from_lock:
        findings.append(Finding(line, "pip install without packages or -r: install from the lock"))
    return findings


def lint(text: str, lock_text: str | None = None, root: Path | None = None) -> list[Finding]:
    """All findings of one definition file's text, in line order."""
    lock_pins = read_pins(lock_text if lock_text is not None else (LOCK.read_text() if LOCK.is_file() else ""))
    root = root or PROJECT_ROOT
    findings: list[Finding] = []
    header: dict[str, tuple[int, str]] = {}
    sections: dict[str, list[tuple[int, str]]] = {}
    seen_at: dict[str, int] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if raw.startswith("%"):
            name = stripped[1:].split()[0] if len(stripped) > 1 else ""
            if name not in SECTIONS:
                known = ", ".join(f"%{s}" for s in sorted(SECTIONS))
                findings.append(Finding(number, f"unknown section %{name}; known sections: {known}"))
                current = None
                continue
            if name in seen_at:
                findings.append(Finding(number, f"section %{name} repeated (first at line {seen_at[name]})"))
            seen_at[name] = number
            current = name
            sections.setdefault(name, [])
            continue
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            if ":" not in stripped:
                findings.append(Finding(number, f"header line {stripped!r} is not 'Key: value'"))
                continue
            key, value = (part.strip() for part in stripped.split(":", 1))
            header[key.lower()] = (number, value)
        else:
            sections[current].append((number, raw))
    if "bootstrap" not in header:
        findings.append(Finding(1, "missing 'Bootstrap:' header (e.g. Bootstrap: docker)"))
    if "from" not in header:
        findings.append(Finding(1, "missing 'From:' header naming the base image"))
    else:
        number, image = header["from"]
        if not DIGEST.search(image):
            findings.append(Finding(number, f"From: {image} is not pinned by digest; use image:tag@sha256:<64 hex>"))
    for number, raw in sections.get("files", []):
        parts = raw.split()
        if parts and not parts[0].startswith("#") and not (root / parts[0]).exists():
            findings.append(Finding(number, f"%files source {parts[0]} does not exist in the project"))
    if "files" in sections and not any(LOCK_IN_IMAGE in raw for _, raw in sections["files"]):
        findings.append(Finding(seen_at["files"], f"%files does not copy the lock to {LOCK_IN_IMAGE}"))
    for name in ("setup", "post"):
        for number, command in _logical_lines(sections.get(name, [])):
            for args in _pip_commands(command):
                findings.extend(_check_pip(args, lock_pins, number))
    return sorted(findings, key=lambda f: f.line)


def spython_check(path: Path) -> list[Finding]:
    """Second opinion from spython: it must parse the file and see the same base image."""
    from spython.main.parse.parsers import SingularityParser

    try:
        recipe = SingularityParser(str(path)).recipe
    except Exception as exc:  # spython raises bare Exceptions and SystemExit-free errors alike
        return [Finding(1, f"spython could not parse the file: {exc}")]
    base = getattr(recipe, "fromHeader", None)
    text = path.read_text()
    match = re.search(r"^From:\s*(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    if match and base and base.strip() != match.group(1):
        return [Finding(1, f"spython reads the base image as {base!r}, not {match.group(1)!r}")]
    return []


def _lint(definition: str) -> int:
    path = Path(definition)
    if not path.is_file():
        print(f"error: {str(path)!r} does not exist; give an Apptainer definition such as container/harness.def",
              file=sys.stderr)
        return 2
    findings = lint(path.read_text()) + spython_check(path)
    for finding in findings:
        print(f"{path}:{finding}")
    if findings:
        return 1
    print(f"{path}: OK (sections, pinned base image, pip installs from {LOCK_IN_IMAGE}; spython agrees)")
    return 0


def _lock(check: bool) -> int:
    wanted = lock_from_constraints(CONSTRAINTS.read_text())
    if check:
        drift = lock_drift(CONSTRAINTS.read_text(), LOCK.read_text())
        for line in drift:
            print(f"{LOCK.name}: {line}")
        if drift:
            print("run `make lock` to regenerate the container lock from constraints.txt")
            return 1
        print(f"{LOCK.name} agrees with constraints.txt")
        return 0
    LOCK.write_text(wanted)
    print(f"wrote {LOCK}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python tools/container.py lint [DEF]`` / ``lock [--check]`` (``make container-lint``, ``make lock``)."""
    parser = argparse.ArgumentParser(prog="tools/container.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_lint = sub.add_parser("lint", help="check container/harness.def (exit 1 with line numbers on findings)")
    p_lint.add_argument("definition", nargs="?", default=str(DEFINITION))
    p_lock = sub.add_parser("lock", help="write container/requirements.lock from constraints.txt")
    p_lock.add_argument("--check", action="store_true", help="only report drift between the two (exit 1)")
    args = parser.parse_args(argv)
    return _lint(args.definition) if args.command == "lint" else _lock(args.check)


if __name__ == "__main__":
    sys.exit(main())
