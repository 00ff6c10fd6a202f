"""A batch's outcome against real databases: a target that is down means retry (nothing lost, catches up
later); a target that rejects one event's rows dead-letters that event with the database's message."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from connectors.inventory import InventoryConnector, observations, stock
from connectors.targets import deliver_batch
from tests.connectors.tcpproxy import closed_port
from tests.connectors.test_inventory import _payload

pytestmark = pytest.mark.services


@pytest.fixture(params=["pg", "mariadb"])
def url(request) -> str:  # noqa: ANN001
    u = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return "mysql+pymysql://" + u[len("mysql://"):] if u.startswith("mysql://") else u


def test_down_then_up_then_rejected(url: str) -> None:
    from sqlalchemy.engine import make_url
    real = make_url(url)
    down = real.set(port=closed_port()).render_as_string(hide_password=False)
    events = [("e1", _payload(1, 0, barcodes=[(0, "0001")])), ("e2", _payload(2, 1, barcodes=[(0, "0002")])),
              ("e3", _payload(3, 2, barcodes=[(0, "X" * 200)]))]  # code longer than String(128)
    out = deliver_batch(InventoryConnector("inv", down), events)
    assert sorted(out.retry) == ["e1", "e2", "e3"] and not out.delivered and not out.dead

    c = InventoryConnector("inv", real.render_as_string(hide_password=False))
    c.migrate()
    with c.engine.begin() as conn:
        conn.execute(observations.delete())
        conn.execute(stock.delete())
    out = deliver_batch(c, events)
    assert out.delivered == ["e1", "e2"] and not out.retry
    assert list(out.dead) == ["e3"] and ("too long" in out.dead["e3"].lower() or "long" in out.dead["e3"])
    with c.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(stock)).scalar() == 2
    c.engine.dispose()
