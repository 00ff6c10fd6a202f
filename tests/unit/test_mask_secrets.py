"""services.safetext.mask_secrets: every secret shape masked, everything else left as it was."""

from __future__ import annotations

import logging

import pytest

from services.safetext import MaskingFormatter as RedactingFormatter, mask_secrets as redact

CASES = [
    ("postgresql+psycopg://inv:hunter2@db:5432/inventory", "postgresql+psycopg://inv:***@db:5432/inventory"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("amqp://guest:hunter2@[::1]:5672//", "amqp://guest:***@[::1]:5672//"),
    ("not a database URL: 'inv:hunter2@db/inventory'", "not a database URL: 'inv:***@db/inventory'"),
    ("https://hooks.example/in?token=hunter2&x=1", "https://hooks.example/in?token=***&x=1"),
    ("https://s3/b/k.png?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123",
     "https://s3/b/k.png?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("file:///d/o/k.png?expires=1&signature=deadbeef", "file:///d/o/k.png?expires=1&signature=***"),
    ("secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret: whsec_***"),
    ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
]
UNCHANGED = ["http://127.0.0.1:8080/hooks", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres",
             "job 12 failed: bad image 'shelf/a:b@c.png'", "2026-11-25T08:00:00+01:00", "S3 server at 127.0.0.1:9"]


@pytest.mark.parametrize(("text", "want"), CASES)
def test_secrets_are_masked(text: str, want: str) -> None:
    assert redact(text) == want
    assert redact(want) == want  # idempotent


@pytest.mark.parametrize("text", UNCHANGED)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_log_lines_and_their_tracebacks_are_masked() -> None:
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise ConnectionError("could not connect to postgresql://app:hunter2@db/x")
    except ConnectionError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "using %s", ("redis://:hunter3@r:6379/0",),
                                   sys.exc_info())
    line = formatter.format(record)
    assert "hunter2" not in line and "hunter3" not in line
    assert "redis://:***@r:6379/0" in line and "postgresql://app:***@db/x" in line
