"""The workers' Celery application: ``jobs.queue``'s configuration, and the tasks of ``workers.tasks``
registered under ``jobs.queue``'s names. The API builds its own producer from the same configuration
(``api.deps``) and never imports the tasks (nor torch through them).
"""

from __future__ import annotations

from celery import Celery

from etm.settings import Settings
from jobs.queue import APP_NAME, celery_config


def make_celery(settings: Settings) -> Celery:
    url = settings.celery_url
    app = Celery(APP_NAME, broker=url, backend=url, include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    return app
