"""``python -m workers [celery worker options]``: a worker with the service's defaults.

Defaults: ``-Q $ETM_JOB_QUEUE,$ETM_INSPECT_QUEUE --concurrency $ETM_WORKER_CONCURRENCY --loglevel $ETM_LOG_LEVEL``,
prefork pool, no gossip/mingle (faster start; workers share nothing but Redis). Options given on
the command line are appended and win (e.g. ``python -m workers -Q gpu``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from workers.worker import app, settings

    args = list(sys.argv[1:] if argv is None else argv)
    defaults = ["worker", "--without-gossip", "--without-mingle", "--pool", "prefork"]
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in args):
        defaults += ["-Q", f"{settings.job_queue},{settings.inspect_queue}"]
    if not any(a in ("-c", "--concurrency") or a.startswith("--concurrency=") for a in args):
        defaults += ["--concurrency", str(settings.worker_concurrency)]
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        defaults += ["--loglevel", settings.log_level]
    app.worker_main(defaults + args)


if __name__ == "__main__":
    main()
