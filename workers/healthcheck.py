"""``python -m workers.healthcheck NAME``: exit 0 when the worker ``NAME@<this host>`` answers a ping (a full
node name ``NAME@HOST`` is taken as it is).

For container healthchecks (docker-compose.yml): a worker whose process is alive but that no longer consumes
(broker connection lost, pool wedged) does not answer Celery's remote-control ping, so the check fails and the
orchestrator restarts it. Reads ``ETM_REDIS_URL`` like the worker; imports nothing of the scoring stack.
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str] | None = None) -> int:
    from etm.settings import Settings
    from workers.app import make_celery

    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "celery"
    node = name if "@" in name else f"{name}@{socket.gethostname()}"
    app = make_celery(Settings())  # the worker's own broker settings (key prefix, transport options)
    try:
        replies = app.control.ping(destination=[node], timeout=3.0)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is unhealthy
        print(f"{node}: broker unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not any(node in r for r in replies):
        print(f"{node}: no answer to ping within 3 s", file=sys.stderr)
        return 1
    print(f"{node}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
