"""Text that vlwatch does not control, or must not show.

- Patterns an operator configures run on text that whoever uploads an image controls (OCR lines):
  :func:`compile_untrusted` compiles them with RE2, whose matching time is linear in the text.
- Printed, logged or stored text can carry secrets: URLs with credentials (``scheme://user:password@host``, a
  bare ``user:password@host``, ``?token=...``, presigned S3 signatures), Standard Webhooks secrets (``whsec_...``)
  and bearer tokens. :func:`mask_secrets` masks them by shape, so it also catches a secret inside an error message
  from a library (a database driver quoting its URL, a YAML error quoting a line); every CLI message and log line
  goes through it (``services.cli.main``, :class:`MaskingFormatter`), as do configuration and settings errors.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MAX_LINE = 2000  # characters of one line of untrusted text that patterns see

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*):[^/\s'\"]*@", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"([?&;][\w.-]*(?:token|secret|passw|pwd|key|sig|auth|credential)[\w.-]*=)[^&#\s'\"]+",
                           re.IGNORECASE)
_BARE_PASSWORD = re.compile(r"(?<![\w/:.@-])([\w.+-]+):[^@/?#:\s'\"]+@(?=[\w\[])")  # user:pw@host, no scheme
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")
_BEARER = re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE)


def compile_untrusted(pattern: str) -> Any:
    """``pattern`` compiled by RE2, for text that others control (OCR lines of uploaded images): matching takes
    time linear in the text, so no pattern can stall on a crafted line. RE2 has no backreferences or lookaround;
    such a pattern is a ValueError saying so."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a regular expression RE2 accepts ({why}; RE2 has no backreferences or "
                         f"lookaround)") from None


def capped(line: str) -> str:
    """At most ``MAX_LINE`` characters of ``line`` (an OCR line is far shorter; a longer one is crafted)."""
    return line[:MAX_LINE]


def mask_secrets(text: str) -> str:
    """``text`` with every secret it holds replaced by ``***``: URL passwords (``scheme://user:***@host``), the
    value of every secret-looking query parameter (``?token=***``), webhook secrets and bearer tokens. For
    anything printed, logged or stored about a URL or an error."""
    text = _SECRET_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
    text = _BARE_PASSWORD.sub(r"\1:***@", text)
    text = _WEBHOOK_SECRET.sub("whsec_***", text)
    return _BEARER.sub(r"\1***", text)


class MaskingFormatter(logging.Formatter):
    """A log formatter whose every line (traceback included) goes through :func:`mask_secrets`."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))
