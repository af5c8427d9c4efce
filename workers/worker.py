"""The worker's Celery app: ``celery -A workers.worker worker -Q cpu`` (or ``python -m workers``).

Every worker process runs torch and ONNX Runtime with ``ETM_TORCH_THREADS`` threads (default 1):
the measures are many small tensor ops, and on few cores OpenMP barriers between threads cost far
more than a second thread gains.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from etm.settings import get_settings
from workers.app import make_celery

settings = get_settings()
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = make_celery(settings)
import workers.tasks  # noqa: E402,F401 - registers the tasks with this app


def _limit_threads(**_: Any) -> None:
    import torch

    torch.set_num_threads(settings.torch_threads)


def _preload() -> None:
    """Import what tasks use here in the main process, so that forked pool processes start with it
    loaded (otherwise the first job of each process pays seconds of imports): spec checks (measures,
    salience methods), dataset validation, the sandbox calls, webhooks. Models are loaded and run only
    in the sandboxed child (``etm.sandbox``), so their runtimes (ONNX, ONNX Runtime, torch.export)
    and the evaluation itself are not imported here: that was ~1.5 s of every worker start."""
    import etm.datasets  # noqa: F401
    import etm.measures  # noqa: F401
    import jobs.webhooks  # noqa: F401
    import workers.inspection  # noqa: F401
    from etm.salience.registry import method_names

    method_names()


_limit_threads()  # the main process (solo pool) and, inherited, forked children
_preload()
worker_process_init.connect(_limit_threads)
