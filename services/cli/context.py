"""What every command shares: settings and the YAML config, read once per invocation, and the things built from
them (the object store, the Celery app, the job sender) only when a command needs them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import click

if TYPE_CHECKING:
    from celery import Celery

    from services.config import AppConfig
    from services.settings import Settings
    from services.storage import ObjectStore


class Ctx:
    def __init__(self) -> None:
        from services.config import ConfigError, load_config
        from services.settings import SettingsError, load_settings

        try:
            self.settings: Settings = load_settings()
            self.config: AppConfig = load_config(self.settings.config)
        except (SettingsError, ConfigError) as exc:  # both redact their messages
            raise click.ClickException(str(exc)) from None
        self._app: Optional[Celery] = None

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    def store(self, ensure_bucket: bool = True) -> ObjectStore:
        """The object store of the settings; the bucket is made when missing (not by long-running workers,
        which must start while the store is down and meet it later)."""
        from services.storage import store_from_settings

        store = store_from_settings(self.settings)
        if ensure_bucket:
            store.ensure_bucket()
        return store

    def celery(self) -> Celery:
        if self._app is None:
            from workers.app import make_app

            self._app = make_app(self.settings)
        return self._app

    def send_job(self):  # noqa: ANN201
        from workers.app import sender_for

        return sender_for(self.celery())

    def ensure_db(self) -> None:
        """Migrate the database to the newest revision (the embedded default's folder is made first)."""
        from services.migrate import upgrade

        if self.db_url.startswith("sqlite"):
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(self.db_url)


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def parse_time(text: str) -> datetime:
    """An ISO time from the command line; UTC unless it carries an offset."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO time (e.g. 2026-11-25T08:00 or 2026-11-25T08:00+01:00)")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def jsonable(x: Any) -> Any:
    """A counts or status object as a plain dict for ``--json`` output."""
    if hasattr(x, "__dict__"):
        return {k: v for k, v in vars(x).items() if not k.startswith("_")}
    return x
