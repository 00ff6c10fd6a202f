"""Database connectors from the outbox, through the delivery lifecycle (:mod:`connectors.lifecycle`).

The ``connectors`` table follows the YAML file, so fan-out makes a delivery per connector whichever process fans
out. The dispatcher claims the due deliveries of each connector this process runs on a lane of its own, applies
them as one batch in one transaction of its target database (:func:`apply_batch`), and records every outcome:
``delivered``; a target that cannot be reached keeps its events pending along the retry schedule (nothing is
lost; it catches up when the database is back); a target that rejects an event's rows dead-letters that event
with the database's message while the rest of the batch is delivered.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Mapping, Optional, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors import lifecycle
from connectors.lifecycle import Claimed, DeliveryKind, Outcome
from connectors.targets import Connector, deliver_batch
from services.events import JOB_SUCCEEDED
from services.schema import ConnectorDelivery, ConnectorTarget, DeliveryStatus, utcnow

CONNECTORS = DeliveryKind("connector", ConnectorDelivery, ConnectorTarget, "connector_id")

CONNECTOR_EVENTS = (JOB_SUCCEEDED,)  # what connectors consume; other events make no deliveries


def sync_connectors(session: Session, kinds: Mapping[str, str]) -> None:
    """Make the ``connectors`` table match the YAML file: ``{name: kind}`` active, every other one inactive
    (its history stays; no new deliveries are made for it)."""
    existing = {c.name: c for c in session.execute(select(ConnectorTarget)).scalars()}
    for name, kind in kinds.items():
        row = existing.get(name)
        if row is None:
            session.add(ConnectorTarget(name=name, kind=kind, event_types=list(CONNECTOR_EVENTS), active=True,
                                        created_at=utcnow()))
        else:
            row.kind, row.active = kind, True
    for name, row in existing.items():
        if name not in kinds:
            row.active = False
    session.flush()


def apply_batch(connector: Connector, batch: Sequence[Claimed]) -> list[Outcome]:
    """Apply one connector's claimed deliveries as one batch (:func:`connectors.targets.deliver_batch`); an
    outcome for each: delivered, dead with the database's message, or retry."""
    # An event id occurs once per connector (unique event_id, connector_id).
    result = deliver_batch(connector, [(c.event_id, json.loads(c.body)) for c in batch])
    delivered = set(result.delivered)
    outcomes = []
    for c in batch:
        if c.event_id in delivered:
            outcomes.append(Outcome(c))
        elif c.event_id in result.dead:
            outcomes.append(Outcome(c, result.dead[c.event_id], final=True))
        else:
            outcomes.append(Outcome(c, result.retry.get(c.event_id, "not applied")))
    return outcomes


def replay(session: Session, *, since: Optional[datetime] = None, connector: Optional[str] = None,
           status: Sequence[str] = (DeliveryStatus.dead.value, DeliveryStatus.delivered.value)) -> int:
    """Deliver again the events created since ``since``: matching deliveries (dead and delivered by default;
    connector writes are idempotent upserts, so re-applying is safe) become pending and due now, and events
    that have no delivery for an active connector (it was added later) get one. Returns how many are due."""
    names = list(session.scalars(select(ConnectorTarget.name).where(ConnectorTarget.active.is_(True))))
    if connector is not None:
        if connector not in names:
            raise ValueError(f"unknown or inactive connector {connector!r}")
        names = [connector]
    return (lifecycle.replay(session, CONNECTORS, status=status, targets=names, since=since)
            + lifecycle.deliver_missed(session, CONNECTORS, names, since))


@dataclass
class ConnectorStatus:
    name: str
    kind: str
    active: bool
    pending: int = 0
    due: int = 0
    delivered: int = 0
    dead: int = 0
    oldest_pending_at: Optional[datetime] = None
    last_delivered_at: Optional[datetime] = None
    last_error: Optional[str] = None


def status(session: Session, now: Optional[datetime] = None) -> list[ConnectorStatus]:
    """Per-connector delivery state: counts by status, due now, lag (oldest pending event), last error."""
    now = now or utcnow()
    return [ConnectorStatus(t.name, t.kind, t.active, **asdict(lifecycle.state(session, CONNECTORS, t.id, now)))
            for t in session.scalars(select(ConnectorTarget).order_by(ConnectorTarget.name))]
