"""The ``vlwatch`` command line: one module per command group, each a thin layer over plain functions.

This package is the only code that builds things from settings (object store, Celery app, connectors, engines)
and hands them down; everything below it takes what it needs as arguments. Heavy imports happen inside the
commands, so ``vlwatch --help`` and quick commands start fast.
"""

from services.cli.main import main

__all__ = ["main"]
