"""Credentials never reach a log line: tracking URIs can hold ``user:password@``, and job logs
and run folders are read by others on shared storage. Imports nothing heavy: the CLI installs
the filter before anything else runs."""

from __future__ import annotations

import logging
import re

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it masked: tracking URIs can hold
    credentials, and log lines end up in shared job logs."""
    return _CREDENTIALS.sub("***@", text)


class RedactCredentials(logging.Filter):
    """Masks credentials in URIs in every record a handler emits (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
