"""Connecting to PostgreSQL is bounded in time: a server that accepts the connection and then says nothing (or
drops packets) fails the connect with an error instead of holding the caller for the system's TCP timeout."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy.exc import OperationalError

import services.db
from services.db import get_engine


@pytest.fixture
def silent_server():
    """A TCP port whose connections complete and are never answered."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


def test_a_silent_database_fails_the_connect_within_the_timeout(silent_server, monkeypatch):
    monkeypatch.setattr(services.db, "PG_CONNECT_TIMEOUT_S", 2)  # libpq's smallest
    engine = get_engine(f"postgresql+psycopg://vlwatch@127.0.0.1:{silent_server}/silent")
    t = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        engine.connect()
    assert time.monotonic() - t < 10


def test_a_urls_own_connect_timeout_wins(silent_server, monkeypatch):
    monkeypatch.setattr(services.db, "PG_CONNECT_TIMEOUT_S", 600)
    engine = get_engine(f"postgresql+psycopg://vlwatch@127.0.0.1:{silent_server}/silent?connect_timeout=2")
    t = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        engine.connect()
    assert time.monotonic() - t < 10
