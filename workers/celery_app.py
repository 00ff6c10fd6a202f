"""Module-level app for ``celery -A workers.celery_app worker``: settings read once from the environment."""

from services.settings import load_settings
from workers.app import make_app

app = make_app(load_settings())
