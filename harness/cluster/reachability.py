"""Is the MLflow tracking server there? Asked once, before anything starts, in a few seconds.

MLflow's own client retries a dead server with backoff for minutes (254 s measured, then a
traceback), and it does so only once the model is built. The probe here opens one TCP
connection and asks ``/health`` with a short timeout, with no retries; light to import.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from harness.cluster.redaction import redact

def _probe_seconds(default: float = 4.0) -> float:
    raw = os.environ.get("HARNESS_MLFLOW_PROBE_S", "")
    try:
        return max(0.5, float(raw)) if raw else default
    except ValueError:
        raise SystemExit(f"error: HARNESS_MLFLOW_PROBE_S={raw!r} is not a number of seconds; e.g. 10") from None


#: Seconds for the connection and for the answer, each: within the 10 s a user waits at most
#: (``HARNESS_MLFLOW_PROBE_S`` for a server known to answer slowly).
TIMEOUT_S = _probe_seconds()


def tracking_problem(uri: str, timeout: float = TIMEOUT_S) -> str:
    """Why the tracking server at ``uri`` cannot be used, or "" when it answers (or is a local store)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https"):
        return ""
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return (f"MLFLOW_TRACKING_URI={redact(uri)} does not answer ({exc.strerror or type(exc).__name__} "
                f"after {time.monotonic() - started:.1f} s)")
    # urllib takes no user:password@ in a URL: it goes into a header, as MLflow's client sends it
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    health = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/") + "/health", "", ""))
    headers = {"User-Agent": "hpo-harness"}
    if parsed.username is not None:
        user = urllib.parse.unquote(parsed.username)
        password = urllib.parse.unquote(parsed.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(health, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - http(s) only, checked above
            answer.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # an authenticating proxy answered: the server is there
            return ""
        return f"MLFLOW_TRACKING_URI={redact(uri)} answered /health with HTTP {exc.code}; is it an MLflow server?"
    except (OSError, ValueError) as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            return f"MLFLOW_TRACKING_URI={redact(uri)} did not answer /health within {timeout:g} s"
        return f"MLFLOW_TRACKING_URI={redact(uri)}: asking /health failed ({redact(str(exc))})"
    return ""
