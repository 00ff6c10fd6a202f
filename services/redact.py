"""Secrets out of what is printed or logged: passwords in URLs (``scheme://user:***@host``), secrets in query
strings (``?token=***``, presigned S3 signatures), Standard Webhooks secrets (``whsec_***``) and bearer tokens.

``redact`` is applied where text leaves the process for a person: every CLI message and log line
(``services.cli.main``), configuration and settings errors. It masks by shape, so it also catches a secret inside
an error message from a library (a database driver quoting its URL, a YAML error quoting a line).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s'\"]*):(?P<secret>[^@/?#\s'\"]+)@")
_BARE_PASSWORD = re.compile(r"(?<![\w/:.@-])(?P<head>[\w.+-]+):(?P<secret>[^@/?#:\s'\"]+)@(?=[\w\[])")  # user:pw@host
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:access_token|token|secret|client_secret|password|passwd|pwd|api[_-]?key|apikey|key|"
    r"signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token)=)(?P<secret>[^&#\s'\"]+)")
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{4,})")


def redact(text: str) -> str:
    """``text`` with every secret it holds replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _BARE_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _WEBHOOK_SECRET.sub(f"whsec_{MASK}", text)
    return _BEARER.sub(lambda m: f"{m['head']}{MASK}", text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line (traceback included) goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
