"""Connectors built from the YAML file: ``connectors:`` names targets, ``locations``/``zones``/``rules`` feed them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

from connectors.inventory import InventoryConnector, Location
from connectors.security import Rule, SecurityConnector, Zone
from connectors.targets import Connector
from services.config import AppConfig
from services.config_targets import parse_window


def build_connector(name: str, config: AppConfig, store: Optional[Any] = None) -> Connector:
    """The connector called ``name`` in ``config``; ``store`` presigns snapshot links (security)."""
    c = config.connectors[name]
    if c.kind == "inventory":
        locations = {src: Location(loc.site, loc.aisle, loc.bay) for src, loc in config.locations.items()}
        return InventoryConnector(name, c.url, locations=locations, sku_patterns=c.sku_patterns)
    rule_names = c.rules if c.rules is not None else tuple(config.rules)
    rules = [Rule(name=r, labels=config.rules[r].labels, zones=config.rules[r].zones,
                  windows=tuple(parse_window(w) for w in config.rules[r].windows),
                  min_score=config.rules[r].min_score, cooldown_s=config.rules[r].cooldown_seconds,
                  severity=config.rules[r].severity, checks=config.rules[r].checks)
             for r in rule_names]
    used = {z for r in rules for z in r.zones}
    zones = [Zone(name=z, source=config.zones[z].source, points=config.zones[z].points,
                  normalised=config.zones[z].normalised) for z in config.zones if z in used]
    return SecurityConnector(name, c.url, zones=zones, rules=rules, timezone=c.timezone, store=store,
                             link_lifetime=timedelta(seconds=c.snapshot_lifetime_seconds))


def build_connectors(config: AppConfig, store: Optional[Any] = None) -> dict[str, Connector]:
    return {name: build_connector(name, config, store) for name in config.connectors}
