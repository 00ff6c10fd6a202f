"""Text that vlwatch does not control, or must not show.

- Patterns an operator configures run on text that whoever uploads an image controls (OCR lines):
  :func:`compile_untrusted` compiles them with RE2, whose matching time is linear in the text.
- URLs carry credentials (``scheme://user:password@host``, ``?token=...``): :func:`mask_secrets` masks them in
  anything printed, logged or stored.
"""

from __future__ import annotations

import re
from typing import Any

MAX_LINE = 2000  # characters of one line of untrusted text that patterns see

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*):[^/\s'\"]*@", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"([?&;][\w.-]*(?:token|secret|passw|pwd|key|sig|auth|credential)[\w.-]*=)[^&#\s'\"]+",
                           re.IGNORECASE)


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
    """``text`` with every URL's password (``scheme://user:***@host``) and the value of every secret-looking
    query parameter (``?token=***``) masked: for anything printed, logged or stored about a URL."""
    return _SECRET_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
