"""API tokens: who may read which sources' results, and who may upload.

A token is ``vlw_`` and 43 URL-safe characters (256 random bits); only its SHA-256 is stored, so the database
never holds a usable credential. A presented token is hashed, its row fetched by that hash, and the hashes are
compared with ``hmac.compare_digest`` (constant time). A token sees the sources it names (``None``: every source);
``can_upload`` lets it ask for presigned uploads into those sources and post bucket notifications.

The HTTP API, the results page and the bucket-notification listener all check tokens through ``Authenticator``,
which refuses every request without a valid token unless it was made with ``no_auth=True`` (``--no-auth``, for
local use only).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from services.db import session_scope
from services.schema import ApiToken, AuditEntry, utcnow

PREFIX = "vlw_"


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's name and what it may do."""

    name: str
    sources: Optional[frozenset[str]]  # None: every source
    can_upload: bool

    def sees(self, source: Optional[str]) -> bool:
        """Whether this principal may see images of ``source`` (images of no source: only unscoped tokens)."""
        return self.sources is None or (source is not None and source in self.sources)


ANONYMOUS = Principal("anonymous (--no-auth)", None, True)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit(session: Session, action: str, criteria: dict[str, Any], counts: dict[str, Any],
          source: Optional[str] = None) -> None:
    """One row of the audit log, in the caller's transaction."""
    session.execute(insert(AuditEntry).values(at=utcnow(), action=action, actor=_actor(), source=source,
                                              criteria=criteria, counts=counts))


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (a container without /etc/passwd entry)
        return "unknown"


def add_token(session: Session, name: str, sources: Optional[Iterable[str]] = None, can_upload: bool = False) -> str:
    """Create token ``name``; returns the token itself, which is shown once and never stored."""
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists already (revoke it first, or choose another name)")
    token = PREFIX + secrets.token_urlsafe(32)
    scope = sorted(set(sources)) if sources is not None else None
    session.add(ApiToken(name=name, token_sha256=digest(token), hint=token[:8], sources=scope,
                         can_upload=can_upload, created_at=utcnow()))
    audit(session, "token.add", {"name": name, "sources": scope, "can_upload": can_upload}, {})
    return token


def revoke_token(session: Session, name: str) -> None:
    done = session.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                           .values(revoked_at=utcnow())).rowcount
    if not done:
        raise TokenError(f"no active token named {name!r}")
    audit(session, "token.revoke", {"name": name}, {})


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.execute(select(ApiToken).order_by(ApiToken.name)).scalars())


class Authenticator:
    """Checks bearer tokens against ``api_tokens`` (one indexed select per request, so a revocation holds at
    once). ``static_token``: one more token, with every right, given on the command line (the listener's
    ``--token``, which MinIO and SeaweedFS are configured with)."""

    def __init__(self, db_url: str, no_auth: bool = False, static_token: Optional[str] = None) -> None:
        self.db_url, self.no_auth, self.static_token = db_url, no_auth, static_token

    def principal(self, authorization: Optional[str]) -> Optional[Principal]:
        """The principal of an ``Authorization`` header value (``Bearer <token>`` or the bare token); None when
        it is missing, unknown or revoked."""
        if self.no_auth:
            return ANONYMOUS
        token = (authorization or "").strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            return None
        if self.static_token and hmac.compare_digest(token.encode(), self.static_token.encode()):
            return Principal("static token", None, True)
        presented = digest(token)
        with session_scope(self.db_url) as s:
            row = s.execute(select(ApiToken.name, ApiToken.token_sha256, ApiToken.sources, ApiToken.can_upload)
                            .where(ApiToken.token_sha256 == presented, ApiToken.revoked_at.is_(None))).first()
        if row is None or not hmac.compare_digest(row.token_sha256, presented):
            return None
        return Principal(row.name, frozenset(row.sources) if row.sources is not None else None, row.can_upload)
