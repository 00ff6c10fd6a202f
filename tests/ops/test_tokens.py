"""Tokens: made and revoked by the CLI, stored only as SHA-256, checked in constant time, scoped to sources."""

from __future__ import annotations

import hashlib
import hmac
import subprocess

import pytest
from sqlalchemy import select, text

from services.db import get_engine, session_scope
from services.schema import ApiToken, AuditEntry
from services.tokens import Authenticator, add_token
from tests.pipeline.conftest import ROOT, VLWATCH, app_env  # noqa: F401 - fixture

pytestmark = pytest.mark.services


def vlwatch(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*VLWATCH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 or not ok, proc.stderr
    return proc


def test_cli_add_list_revoke_and_nothing_stored_in_plain_text(app_env, db_url) -> None:  # noqa: ANN001, F811
    token = vlwatch(app_env, "tokens", "add", "erp", "--sources", "shelf,dock", "--upload").stdout.strip()
    assert token.startswith("vlw_") and len(token) >= 40
    with get_engine(db_url).connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_tokens")) for v in row)
        audit_dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM audit_log")) for v in row)
    assert token not in dump and token[8:] not in dump and token not in audit_dump
    with session_scope(db_url) as s:
        row = s.execute(select(ApiToken)).scalar_one()
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert (row.sources, row.can_upload, row.revoked_at) == (["dock", "shelf"], True, None)
    auth = Authenticator(db_url)
    who = auth.principal(f"Bearer {token}")
    assert who is not None and who.sources == frozenset({"shelf", "dock"}) and who.can_upload
    assert who.sees("shelf") and not who.sees("yard") and not who.sees(None)
    listing = vlwatch(app_env, "tokens", "list").stdout
    assert "erp" in listing and "sources=dock,shelf" in listing and token not in listing
    assert "exists already" in vlwatch(app_env, "tokens", "add", "erp", ok=False).stderr
    vlwatch(app_env, "tokens", "revoke", "erp")
    assert auth.principal(f"Bearer {token}") is None  # refused from the next request on
    assert "revoked" in vlwatch(app_env, "tokens", "list").stdout
    with session_scope(db_url) as s:
        assert [a.action for a in s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars()] == [
            "token.add", "token.revoke"]


def test_tokens_are_compared_in_constant_time(db_url, monkeypatch) -> None:  # noqa: ANN001
    with session_scope(db_url) as s:
        token = add_token(s, "reader")
    compared: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a, b):  # noqa: ANN001, ANN202
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("services.tokens.hmac.compare_digest", spy)
    auth = Authenticator(db_url, static_token="static-secret")
    assert auth.principal(token).name == "reader"
    assert compared[-1] == (hashlib.sha256(token.encode()).hexdigest(),) * 2
    assert auth.principal("Bearer static-secret").name == "static token"
    assert auth.principal("wrong") is None and auth.principal(None) is None and auth.principal("") is None
    assert len(compared) >= 3
    assert Authenticator(db_url, no_auth=True).principal(None).sources is None
